"""Stand-ins for what sits outside the machine (model providers), speaking their real wire protocol."""

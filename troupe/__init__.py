"""troupe: a company of AI personas run as supervised Ray actors.

The package is laid out as the design card says: actors, personas, integrations, control panel, config.
"""

__version__ = "0.1.0"

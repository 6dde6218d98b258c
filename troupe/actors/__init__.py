"""The Ray actor classes (orchestrator, persona, session, life loop, task, local model), the agent loop
they run, and the bookkeeping that needs the store (registry, supervisor, session keeper)."""

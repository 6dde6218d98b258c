"""The Ray actor classes (orchestrator, persona, session, life loop, task, local model) and the plain
logic they wrap."""

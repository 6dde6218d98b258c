"""Interfaces to the world outside: the model protocol and its clients (OpenAI-compatible endpoints, the
scripted fake), outbound platform clients (webhooks, VAPI calls, Slack's Web API), and wire formats (the
OpenAI chat-completions shapes, speakable text). Doors and actors use them; they import neither."""

"""The doors: the OpenAI-compatible completions route, VAPI, ElevenLabs and Slack, and what they share."""

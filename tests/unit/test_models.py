"""The fake model and the offline model's transcript rendering (no llama.cpp needed)."""

from __future__ import annotations

import json
from pathlib import Path

from troupe.actors.local_model import render_transcript
from troupe.clients.chat_model import complete
from troupe.clients.fake_model import ScriptedChatModel
from troupe.core.chat import ChatMessage, ModelRequest

SYSTEM = ChatMessage(role="system", content="# Soul\nTony is the CTO.\n# Instructions\nBe brief.")


def request(*messages: ChatMessage, **kw: object) -> ModelRequest:
    return ModelRequest(messages=(SYSTEM, *messages), speaker="Tony", **kw)


def test_transcript_is_a_dialogue_ending_with_the_speaker():
    prompt, stops = render_transcript(
        request(
            ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", content="Hello there."),
            ChatMessage(role="user", content="How are you?"),
        ),
    )
    assert prompt.startswith("Tony is the CTO. Be brief.")
    assert "Caller: Hi\nTony: Hello there.\nCaller: How are you?\nTony:" in prompt
    assert prompt.endswith("Tony:")
    assert "\nCaller:" in stops and "\nTony:" in stops


def test_transcript_keeps_the_newest_turns_that_fit():
    turns = [ChatMessage(role="user", content=f"message number {i} " + "x" * 100) for i in range(100)]
    prompt, _ = render_transcript(request(*turns), max_chars=2000)
    assert len(prompt) < 2300
    assert "message number 99" in prompt and "message number 0 " not in prompt


def test_request_stops_are_added():
    _, stops = render_transcript(request(ChatMessage(role="user", content="x"), stop=("END",)))
    assert "END" in stops


async def test_fake_default_echoes_in_character():
    result = await complete(ScriptedChatModel(), request(ChatMessage(role="user", content="ping")))
    assert result.content == "Tony here. You said: ping"
    assert result.usage.output_tokens > 0


async def test_fake_replays_and_cycles():
    model = ScriptedChatModel(replies=["one", "two"])
    said = [(await complete(model, request(ChatMessage(role="user", content="x")))).content for _ in range(3)]
    assert said == ["one", "two", "one"]


async def test_fake_rules_from_a_file(tmp_path: Path):
    path = tmp_path / "script.json"
    path.write_text(
        json.dumps(
            [
                {"when": "weather", "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}},
                {"when": "", "reply": "Fine."},
            ]
        )
    )
    model = ScriptedChatModel.from_file(path)
    tool = await complete(model, request(ChatMessage(role="user", content="What's the weather?")))
    assert tool.tool_calls[0].name == "get_weather" and json.loads(tool.tool_calls[0].arguments) == {"city": "Oslo"}
    assert tool.finish_reason == "tool_calls"
    after = await complete(
        model,
        request(
            ChatMessage(role="user", content="What's the weather?"),
            ChatMessage(role="assistant", tool_calls=tool.tool_calls),
            ChatMessage(role="tool", content="sunny", tool_call_id=tool.tool_calls[0].id),
        ),
    )
    assert after.content == "Fine." and not after.tool_calls

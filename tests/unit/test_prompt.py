"""Prompt assembly: layers in order, context fitted to the token budget, transcript windows."""

from __future__ import annotations

from datetime import UTC, datetime

from troupe.core.chat import ChatMessage, ToolCall
from troupe.core.persona_file import load_personas
from troupe.core.prompt import PromptContext, build_system_prompt, transcript_window

CATALOG = load_personas()
TONY = CATALOG.get("Tony")


def test_layers_come_in_order_with_team_and_local_time():
    text, report = build_system_prompt(TONY, PromptContext(now=datetime(2026, 11, 24, 18, tzinfo=UTC)), CATALOG)
    assert text.index("# Soul") < text.index("# Identity") < text.index("# Knowledge") < text.index("# Instructions")
    assert "Priya (Staff Backend Engineer)" in text
    assert "10:00" in text and "America/Los_Angeles" in text
    assert report.layer_tokens["soul"] > 0 and report.total_tokens <= report.budget


def test_memories_and_digest_are_included_when_there_is_room():
    ctx = PromptContext(
        caller_id="+1555", memories=("Dana runs payments",), life_digest=("news: read about Postgres 18",)
    )
    text, report = build_system_prompt(TONY, ctx)
    assert "Dana runs payments" in text and "Postgres 18" in text
    assert report.dropped_memories == 0 and report.dropped_digest == 0


def test_context_is_trimmed_to_the_token_budget():
    memories = tuple(f"memory {i}: " + "detail " * 60 for i in range(40))
    text, report = build_system_prompt(TONY, PromptContext(memories=memories))
    assert report.dropped_memories > 0
    assert "memory 0:" in text  # the most relevant survive
    assert report.total_tokens <= TONY.token_budget + 50


def test_client_system_message_becomes_notes():
    text, _ = build_system_prompt(TONY, PromptContext(client_system="The caller is on a noisy line."))
    assert "noisy line" in text


def test_transcript_window_never_starts_with_orphaned_tool_results():
    call = ToolCall(id="c1", name="recall")
    messages = [
        ChatMessage(role="user", content="a"),
        ChatMessage(role="assistant", tool_calls=(call,)),
        ChatMessage(role="tool", content="r", tool_call_id="c1"),
        ChatMessage(role="assistant", content="b"),
        ChatMessage(role="user", content="c"),
    ]
    assert [m.content for m in transcript_window(messages, 3)] == ["b", "c"]
    assert len(transcript_window(messages, 10)) == 5

"""The real offline model (Gemma 3 270M via llama.cpp): it answers in character, streaming, and
troupe serves a persona from it with no endpoint configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import make_settings
from tests.integration.test_runtime import say, text_of
from troupe.actors.local_model import LlamaBackend
from troupe.chat_model import ChatMessage, ModelRequest

pytestmark = pytest.mark.local_model


def test_backend_streams_a_short_reply_that_stops_at_the_next_speaker() -> None:
    backend = LlamaBackend(n_ctx=1024)
    request = ModelRequest(
        messages=(
            ChatMessage(role="system", content="Tony is the CTO of a software company. He is practical and friendly."),
            ChatMessage(role="user", content="Hi Tony, what are you working on this week?"),
        ),
        speaker="Tony",
        max_tokens=48,
        temperature=0.0,
    )
    chunks = list(backend.stream_sync(request))
    text = "".join(c.content for c in chunks)
    assert text.strip()
    assert "Caller:" not in text and "\nTony:" not in text
    assert len([c for c in chunks if c.content]) > 1  # it streamed
    usage = chunks[-1].usage
    assert usage is not None and usage.input_tokens > 10 and 0 < usage.output_tokens <= 48
    assert not usage.estimated


async def test_troupe_answers_from_the_offline_model(start_runtime: Any, tmp_path: Path) -> None:
    runtime = start_runtime(make_settings(tmp_path, model_backend="local", local_model_context=1024))
    events = await say(runtime, "+14155550200", "Hello Tony, how is the team doing?")
    assert events[-1].kind == "done", events[-1]
    assert text_of(events).strip()
    models = await runtime.orchestrator.list_processes.remote(kind="local_model")
    assert [m.status for m in models] == ["running"]

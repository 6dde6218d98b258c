"""The real offline model (Gemma 3 270M through xllamacpp), served by troupe with no endpoint configured:
it answers in character through the door, streaming and not, stops when the caller hangs up, and a
model that cannot run says why. These tests never skip: CI fails if the engine cannot run here."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray

from tests.integration.conftest import make_settings
from troupe.actors.local_model import Engine, default_model_path
from troupe.actors.models import LOCAL_MODEL_ACTOR
from troupe.app import Gateway, create_app
from troupe.core.chat import ChatMessage, ModelChunk, ModelRequest
from troupe.testing.loopback import serving

pytestmark = pytest.mark.local_model

LABELS = ("Caller:", "Tony:", "Maya:", "Alex:", "Jordan:", "Riley:")


def assert_a_reply(text: str) -> None:
    assert text.strip(), "the offline model said nothing"
    for label in LABELS:
        assert label not in text, f"the reply runs on into the transcript: {text!r}"
    assert "\n\n" not in text.strip()


def test_engine_streams_a_reply_that_stops_at_the_next_speaker() -> None:
    engine = Engine(default_model_path(), n_ctx=1024, threads=2, slots=1)
    request = ModelRequest(
        messages=(
            ChatMessage(role="system", content="Tony is the CTO of a software company. He is practical and friendly."),
            ChatMessage(role="user", content="Hi Tony, what are you working on this week?"),
        ),
        speaker="Tony",
        max_tokens=48,
        temperature=0.0,
    )
    chunks: list[ModelChunk] = []
    assert engine.generate(request, chunks.append, threading.Event())
    text = "".join(c.content for c in chunks)
    assert_a_reply(text)
    assert len([c for c in chunks if c.content]) > 1  # it streamed
    usage = chunks[-1].usage
    assert usage is not None and usage.input_tokens > 10 and 0 < usage.output_tokens <= 48
    assert not usage.estimated


@pytest.fixture
def runtime(start_runtime: Any, tmp_path: Path) -> Any:
    return start_runtime(make_settings(tmp_path, model_backend="local", local_model_context=1024))


@pytest.fixture
def door(runtime: Any) -> Iterator[str]:
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        yield url


def engine_state(runtime: Any) -> Any:
    handle = ray.get_actor(LOCAL_MODEL_ACTOR, namespace=runtime.settings.namespace)
    return ray.get(handle.state.remote())


def test_troupe_answers_from_the_offline_model_streaming_and_not(runtime: Any, door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tony", messages=[{"role": "user", "content": "Hello Tony, how is the team doing?"}], max_tokens=40
    )
    assert_a_reply(reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="maya",
        messages=[{"role": "user", "content": "Maya, what is the launch plan for next week?"}],
        max_tokens=40,
        stream=True,
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # streamed as it was generated, not in one piece
    assert_a_reply("".join(pieces))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    models = ray.get(runtime.orchestrator.list_processes.remote(kind="local_model"))
    assert [m.status for m in models] == ["running"]
    ready = httpx.get(f"{door}/ready").json()
    assert ready["checks"]["model"] == "ok"


def test_a_caller_who_hangs_up_stops_the_generation(runtime: Any, door: str) -> None:
    before = engine_state(runtime)
    body = {
        "model": "tony",
        "stream": True,
        "max_tokens": 1500,
        "messages": [{"role": "user", "content": "Tony, count from one to five hundred for me, with commas: 1, 2, 3,"}],
    }
    with httpx.stream("POST", f"{door}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"content"' in line:
                break  # the caller hangs up after the first words, as a voice caller barging in does
    # the engine notices at its next token: the generation is counted cancelled and no slot stays busy
    deadline = time.monotonic() + 60
    state = engine_state(runtime)
    while (state.active or state.cancelled == before.cancelled) and time.monotonic() < deadline:
        time.sleep(0.1)
        state = engine_state(runtime)
    assert state.active == 0
    assert state.cancelled == before.cancelled + 1
    assert state.tokens - before.tokens < 200  # far short of the 1,500 it was allowed


def test_a_model_that_cannot_load_says_why(start_runtime: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model.gguf"
    broken.write_bytes(b"this is not a model" * 100)
    runtime = start_runtime(make_settings(tmp_path, model_backend="local", local_model_path=broken))
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as door:
        ready = httpx.get(f"{door}/ready")
        assert ready.status_code == 503
        model = ready.json()["checks"]["model"]
        assert model.startswith("failed") and "broken-model.gguf" in model

        client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="tony", messages=[{"role": "user", "content": "Hello?"}])
        assert caught.value.status_code == 503
        assert "broken-model.gguf" in str(caught.value)
        # it stays failed and visible; it is not restarted forever
        models = ray.get(runtime.orchestrator.list_processes.remote(kind="local_model"))
        assert [m.status for m in models] == ["failed"]
        assert "broken-model.gguf" in (models[0].error or "")
        assert models[0].restarts == 0

"""The completions door through real HTTP on loopback, with the real `openai` SDK as the client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from tests.integration.conftest import make_settings, write_script
from troupe.app import Gateway, create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def door(start_runtime: Any, tmp_path: Path) -> Iterator[str]:
    script = write_script(
        tmp_path / "script.json",
        [
            {"when": "weather", "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}},
            {"when": "", "reply": "Hello from the fake model."},
        ],
    )
    runtime = start_runtime(make_settings(tmp_path, fake_script=script, max_body_bytes=4096))
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_sdk_non_streaming(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused")
    reply = client.chat.completions.create(model="tony", messages=[{"role": "user", "content": "Hello Tony!"}])
    assert reply.choices[0].message.content == "Hello from the fake model."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_sdk_streaming_with_usage(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="Maya",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Vapi-Caller-Phone": "+14155551234"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake model."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    sessions = httpx.get(f"{door}/api/sessions").json()
    assert {"caller_id": "+14155551234", "agent": "Maya"}.items() <= sessions[0].items()


async def test_async_sdk_streams_without_usage_unless_asked(door: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{door}/v1", api_key="unused")
    stream = await client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_client_tools_come_back_as_tool_calls(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = client.chat.completions.create(
        model="tony", messages=[{"role": "user", "content": "what's the weather?"}], tools=tools
    )
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}


def test_errors_have_the_openai_shape(door: str) -> None:
    unknown = httpx.post(
        f"{door}/v1/chat/completions", json={"model": "zed", "messages": [{"role": "user", "content": "x"}]}
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found" and "Tony" in unknown.json()["error"]["message"]

    malformed = httpx.post(
        f"{door}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]

    wrong = httpx.post(f"{door}/chat/completions", json={"messages": "hello"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"].startswith("messages")

    big = httpx.post(f"{door}/chat/completions", json={"messages": [{"role": "user", "content": "x" * 10_000}]})
    assert big.status_code == 413


def test_probes_and_panel_api(door: str) -> None:
    assert httpx.get(f"{door}/health").json() == {"status": "ok"}
    assert httpx.get(f"{door}/ready").status_code == 200
    status = httpx.get(f"{door}/api/status").json()
    assert status["personas"] == ["Alex", "Tony", "Maya", "Jordan", "Riley"]
    processes = httpx.get(f"{door}/api/processes", params={"kind": "persona"}).json()
    assert {p["agent"] for p in processes} == set(status["personas"])
    assert httpx.get(f"{door}/api/processes/ffffffff").status_code == 404
    models = httpx.get(f"{door}/v1/models").json()
    assert "tony" in {m["id"] for m in models["data"]}

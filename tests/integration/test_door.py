"""The completions door through real HTTP on loopback, with the real `openai` SDK as the client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from tests.integration.conftest import make_settings, write_script
from troupe.app import Gateway, create_app
from troupe.testing.loopback import serving


@pytest.fixture
def runtime(start_runtime: Any, tmp_path: Path) -> Any:
    script = write_script(
        tmp_path / "script.json",
        [
            {"when": "weather", "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}},
            {"when": "", "reply": "Hello from the fake model."},
        ],
    )
    return start_runtime(make_settings(tmp_path, fake_script=script, max_body_bytes=4096, rate_limit_per_minute=20))


@pytest.fixture
def door(runtime: Any) -> Iterator[str]:
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        yield url


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


def test_a_bare_key_is_an_admin_key_as_before(runtime: Any) -> None:
    """Keys configured before roles existed keep working: a bare TROUPE_API_KEYS entry is an admin key."""
    settings = runtime.settings.model_copy(update={"api_keys": SecretStr("k-one-0123456789abc, k-two-0123456789abc")})
    app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        refused = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert "k-one" not in refused.text
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k-two-0123456789abc")
        assert client.chat.completions.create(model="tony", messages=body["messages"]).choices[0].message.content
        assert (
            httpx.get(f"{url}/api/status", headers={"Authorization": "Bearer k-one-0123456789abc"}).status_code == 200
        )


def test_cors_answers_only_the_configured_origins(runtime: Any) -> None:
    settings = runtime.settings.model_copy(update={"cors_origins": "https://panel.example"})
    with serving(create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))) as url:
        headers = {"Origin": "https://panel.example", "Access-Control-Request-Method": "GET"}
        preflight = httpx.options(f"{url}/api/processes", headers=headers)
        assert (
            preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://panel.example"
        )
        other = httpx.get(f"{url}/api/status", headers={"Origin": "https://x.example"})
        assert "access-control-allow-origin" not in other.headers
        health = httpx.get(f"{url}/health", headers={"Origin": "https://panel.example"})
        assert "access-control-allow-origin" not in health.headers  # CORS is for /api/* only


def test_metrics_count_requests_and_tokens(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused")
    client.chat.completions.create(model="jordan", messages=[{"role": "user", "content": "How is cash?"}])
    text = httpx.get(f"{door}/metrics").text
    assert 'troupe_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert 'troupe_time_to_first_token_seconds_count{door="completions",persona="Jordan"}' in text
    assert 'troupe_tokens_total{direction="output",persona="Jordan"}' in text
    assert "troupe_session_pool_size" in text and "troupe_active_sessions" in text


def test_events_stream_shows_a_session_starting(door: str) -> None:
    received: list[str] = []

    def listen() -> None:
        with httpx.stream("GET", f"{door}/api/events", timeout=20) as response:
            for line in response.iter_lines():
                received.append(line)
                if line.startswith("data: ") and "session.started" in line:
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1.0)
    httpx.post(
        f"{door}/v1/chat/completions",
        json={"model": "riley", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Request-ID": "evt-1"},
        timeout=30,
    )
    listener.join(20)
    assert any(line == "event: session.started" for line in received)
    data = [json.loads(line[6:]) for line in received if line.startswith("data: ") and "session.started" in line]
    assert data[-1]["caller_id"] == "req-evt-1" and data[-1]["agent"] == "Riley"


def test_personas_ready_and_rate_limit(door: str) -> None:
    personas = {p["name"]: p for p in httpx.get(f"{door}/api/personas").json()}
    tony = personas["Tony"]
    assert tony["budget_usd"] == 25.0 and set(tony["layers"]) >= {"soul", "identity", "instructions"}
    assert "Tony loves" not in json.dumps(tony)  # never the raw prompt
    ready = httpx.get(f"{door}/ready").json()
    assert ready["checks"] == {"ray": "ok", "store": "ok", "model": "ok"}
    body = {"messages": [{"role": "user", "content": "x"}]}
    statuses = [
        httpx.post(f"{door}/chat/completions", json=body, headers={"X-Request-ID": "flood"}).status_code
        for _ in range(22)
    ]
    assert statuses[:20] == [200] * 20 and statuses[-1] == 429
    limited = httpx.post(f"{door}/chat/completions", json=body, headers={"X-Request-ID": "flood"})
    assert limited.headers["retry-after"] and limited.json()["error"]["type"] == "rate_limit_error"


def test_client_tool_results_continue_the_turn(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key="unused")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages: list[Any] = [{"role": "user", "content": "what's the weather?"}]
    first = client.chat.completions.create(model="tony", messages=messages, tools=tools, user="tool-user")
    call = first.choices[0].message.tool_calls[0]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
    ]
    second = client.chat.completions.create(model="tony", messages=messages, tools=tools, user="tool-user")
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Hello from the fake model."

"""VAPI end to end through a running troupe: its custom-LLM requests, its server messages (end-of-call
report into memory, tool calls, assistant requests) with its secret or signed by its HMAC credential
(forged, stale and replayed ones refused, and nothing done), and outbound callbacks to a fake VAPI API on
loopback."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import make_settings
from tests.integration.test_runtime import wait_for
from troupe.app import Gateway, create_app
from troupe.integrations.vapi import hmac_signature
from troupe.store import Store
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.fake_vapi import FakeVapiServer
from troupe.testing.loopback import serving

SECRET = "vapi-shared-secret"
NUMBER = "+14155550142"


def upstream_reply(body: dict[str, Any]) -> str:
    said = body["messages"][-1]["content"] or ""
    if "Summarise" in said:
        return "Ana called about order 42 and wants a refund by Friday."
    return "Hello caller, Tony here."


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behaviour(reply_fn=upstream_reply)) as server:
        yield server


@pytest.fixture
def vapi_api() -> Iterator[FakeVapiServer]:
    with FakeVapiServer() as server:
        yield server


@pytest.fixture
def door(start_runtime: Any, tmp_path: Path, upstream: FakeOpenAIServer, vapi_api: FakeVapiServer) -> Iterator[Any]:
    runtime = start_runtime(
        make_settings(
            tmp_path,
            model_backend="endpoint",
            openai_base_url=upstream.base_url,
            openai_api_key="test-key",
            vapi_secret=SECRET,
            vapi_api_key=vapi_api.api_key,
            vapi_base_url=vapi_api.base_url,
            vapi_phone_number_id="phone-1",
            public_url="https://troupe.example.com",
            outbound_retries=1,
        )
    )
    with serving(create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))) as url:
        yield url, runtime


def vapi_llm_body(call_id: str, content: str) -> dict[str, Any]:
    """What VAPI's custom-LLM provider posts: OpenAI fields plus its call, customer and metadata."""
    return {
        "model": "gpt-4o",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content},
        ],
        "call": {"id": call_id, "type": "inboundPhoneCall", "customer": {"number": NUMBER}, "assistantId": "asst-1"},
        "customer": {"number": NUMBER},
        "phoneNumber": {"id": "phone-1", "number": "+14155550000"},
        "metadata": {},
    }


def event(message: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    return {"json": {"message": message}, "headers": {"X-Vapi-Secret": secret}}


def signed(message: dict[str, Any], secret: str = SECRET, stamp: int | None = None,
           names: tuple[str, str] = ("X-Vapi-Signature", "X-Vapi-Timestamp")) -> dict[str, Any]:  # fmt: skip
    """A server message as a VAPI HMAC credential (SHA-256, hex, "{timestamp}.{body}") sends it."""
    raw = json.dumps({"message": message}).encode()
    timestamp = str(int(time.time()) if stamp is None else stamp)
    headers = {"Content-Type": "application/json", names[0]: hmac_signature(secret, timestamp, raw),
               names[1]: timestamp}  # fmt: skip
    return {"content": raw, "headers": headers}


def remember_fact(call_id: str, fact: str) -> dict[str, Any]:
    return {
        "type": "tool-calls", "call": {"id": call_id, "customer": {"number": NUMBER}},
        "toolCallList": [{"id": "tc-1", "type": "function",
                          "function": {"name": "remember", "arguments": {"fact": fact}}}],
    }  # fmt: skip


def facts(runtime: Any, word: str) -> list[str]:
    """What Tony remembers about the caller that mentions `word` (read from the store)."""

    async def recall() -> list[str]:
        store = await Store.open(runtime.settings.resolved_database_url)
        try:
            return [m.content for m in await store.recall("Tony", subject=NUMBER) if word in m.content]
        finally:
            await store.close()

    return asyncio.run(recall())


def first_speakable(url: str, body: dict[str, Any]) -> tuple[float, str]:
    began = time.perf_counter()
    first, text = None, []
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                content = delta[0]["delta"].get("content") if delta else None
                if content:
                    first = first or time.perf_counter()
                    text.append(content)
    assert first is not None
    return first - began, "".join(text)


def test_custom_llm_call_is_remembered_for_the_next_call(door: Any, upstream: FakeOpenAIServer) -> None:
    url, runtime = door
    _, text = first_speakable(url, vapi_llm_body("call-abc", "Hi, I need a refund for order 42."))
    assert text == "Hello caller, Tony here."
    sent = upstream.requests[-1]
    assert "Tony" in sent["messages"][0]["content"]  # a generic model name reaches the default persona

    report = {
        "type": "end-of-call-report",
        "endedReason": "customer-ended-call",
        "call": {"id": "call-abc", "customer": {"number": NUMBER}},
        "artifact": {"transcript": "User: Hi, I need a refund for order 42.\nAI: Hello caller, Tony here."},
    }
    answer = httpx.post(f"{url}/vapi/events", **event(report))
    assert answer.status_code == 200
    assert httpx.post(f"{url}/vapi/events", **event(report)).status_code == 200  # VAPI may send it twice

    async def remembered() -> Any:
        store = await Store.open(runtime.settings.resolved_database_url)
        try:
            return await store.recall("Tony", subject=NUMBER)
        finally:
            await store.close()

    memories = asyncio.run(wait_for(remembered))
    assert "order 42" in memories[0].content
    time.sleep(1.0)
    assert len(asyncio.run(remembered())) == 1  # the report sent again was not summarised again

    first_speakable(url, vapi_llm_body("call-def", "It's me again."))
    assert "order 42" in upstream.requests[-1]["messages"][0]["content"]  # the next call starts knowing it


def test_custom_llm_first_speakable_chunk_is_fast(door: Any) -> None:
    url, _ = door
    times = [first_speakable(url, vapi_llm_body(f"call-t{i}", "Quick question."))[0] for i in range(12)]
    median = statistics.median(times[2:]) * 1000
    print(f"\nVAPI-shaped request to first speakable chunk: median {median:.1f} ms over {len(times) - 2}")
    assert median < 2000


def test_events_need_the_secret(door: Any) -> None:
    url, _ = door
    status = {"type": "status-update", "status": "in-progress", "call": {"id": "call-x"}}
    assert httpx.post(f"{url}/vapi/events", **event(status, secret="wrong")).status_code == 401
    assert httpx.post(f"{url}/vapi/events", json={"message": status}).status_code == 401
    bearer = httpx.post(f"{url}/vapi/events", json={"message": status}, headers={"Authorization": f"Bearer {SECRET}"})
    assert bearer.status_code == 200
    bad = httpx.post(f"{url}/vapi/events", content=b"{not json", headers={"X-Vapi-Secret": SECRET})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("Request body is not valid JSON")
    unknown = httpx.post(f"{url}/vapi/events", **event({"type": "model-output", "output": "x"}))
    assert unknown.status_code == 200 and unknown.json() == {"ignored": "model-output"}
    for old in ("call.started", "speech.recognized", "assistant.message"):
        legacy = httpx.post(f"{url}/vapi/events", json={"type": old, "call": {"id": "call-1", "from": NUMBER}},
                            headers={"X-Vapi-Secret": SECRET})  # fmt: skip
        assert legacy.status_code == 200, old


def test_a_signed_message_is_processed_once(door: Any) -> None:
    url, runtime = door
    request = signed(remember_fact("call-hmac", "Likes the blue plan."))
    answer = httpx.post(f"{url}/vapi/events", **request)
    assert answer.status_code == 200 and answer.json()["results"][0]["result"] == "Noted."
    replay = httpx.post(f"{url}/vapi/events", **request)  # the very same signed message again
    error = replay.json()["error"]
    assert replay.status_code == 409 and error["code"] == "replayed_webhook" and "received before" in error["message"]
    assert len(facts(runtime, "blue plan")) == 1  # the replay ran no tool
    # VAPI's default header names (x-signature, x-timestamp) and a millisecond timestamp are read too
    defaults = signed({"type": "status-update", "status": "in-progress", "call": {"id": "call-hmac"}},
                      stamp=int(time.time() * 1000), names=("x-signature", "x-timestamp"))  # fmt: skip
    assert httpx.post(f"{url}/vapi/events", **defaults).json() == {"received": "status-update"}


def test_forged_and_stale_signed_messages_are_refused_and_nothing_runs(door: Any) -> None:
    url, runtime = door

    def refused(request: dict[str, Any], why: str) -> None:
        answer = httpx.post(f"{url}/vapi/events", **request)
        assert answer.status_code == 401, answer.text
        error = answer.json()["error"]
        assert error["code"] == "invalid_signature" and why in error["message"], error

    refused(signed(remember_fact("call-forged", "Forged fact."), secret="not-the-secret"), "does not match")
    refused(signed(remember_fact("call-stale", "Stale fact."), stamp=int(time.time()) - 600), "outside the accepted")
    tampered = signed(remember_fact("call-tampered", "Honest fact."))
    tampered["content"] = tampered["content"].replace(b"Honest", b"Forged")
    refused(tampered, "does not match")
    unstamped = signed(remember_fact("call-unstamped", "Unstamped fact."))
    del unstamped["headers"]["X-Vapi-Timestamp"]
    refused(unstamped, "needs both")
    # a wrong signature is not rescued by the right shared secret alongside it
    both = signed(remember_fact("call-both", "Both fact."), secret="not-the-secret")
    refused({**both, "headers": {**both["headers"], "X-Vapi-Secret": SECRET}}, "does not match")
    assert facts(runtime, "fact.") == []


def test_assistant_request_points_vapi_at_troupe(door: Any) -> None:
    url, _ = door
    answer = httpx.post(f"{url}/vapi/events", **event({
        "type": "assistant-request", "call": {"id": "call-new", "customer": {"number": NUMBER}},
        "phoneNumber": {"id": "phone-1"}, "metadata": {"persona": "maya"},
    }))  # fmt: skip
    assert answer.status_code == 200
    assistant = answer.json()["assistant"]
    assert assistant["model"] == {"provider": "custom-llm", "url": "https://troupe.example.com", "model": "maya"}
    assert "Maya" in assistant["firstMessage"] and assistant["voice"]["provider"] == "11labs"


def test_tool_calls_run_the_personas_tools(door: Any) -> None:
    url, _ = door
    answer = httpx.post(f"{url}/vapi/events", **event({
        "type": "tool-calls",
        "call": {"id": "call-tools", "customer": {"number": NUMBER}},
        "toolCallList": [
            {"id": "tc-1", "type": "function",
             "function": {"name": "remember", "arguments": {"fact": "Prefers email over phone."}}},
            {"id": "tc-2", "type": "function", "function": {"name": "recall", "arguments": {}}},
            {"id": "tc-3", "type": "function", "function": {"name": "launch_rockets", "arguments": {}}},
        ],
    }))  # fmt: skip
    assert answer.status_code == 200
    results = {r["toolCallId"]: r for r in answer.json()["results"]}
    assert results["tc-1"]["result"] == "Noted."
    assert "Prefers email" in results["tc-2"]["result"]
    assert "no tool called 'launch_rockets'" in results["tc-3"]["result"]


def test_schedule_callback_phones_back_with_the_result(door: Any, vapi_api: FakeVapiServer) -> None:
    url, _ = door
    answer = httpx.post(f"{url}/vapi/events", **event({
        "type": "tool-calls",
        "call": {"id": "call-cb", "customer": {"number": NUMBER}},
        "toolCallList": [{"id": "tc-9", "type": "function", "function": {
            "name": "schedule_callback",
            "arguments": {"phone_number": NUMBER, "specialist": "Priya", "task": "Check the refund queue."},
        }}],
    }), timeout=30)  # fmt: skip
    assert "Priya is on it" in answer.json()["results"][0]["result"]
    deadline = time.monotonic() + 30
    while not vapi_api.calls and time.monotonic() < deadline:
        time.sleep(0.2)
    call = vapi_api.calls[0]
    assert call["customer"] == {"number": NUMBER} and call["phoneNumberId"] == "phone-1"
    assert call["assistant"]["model"]["provider"] == "custom-llm"
    assert "Hello caller" in call["assistant"]["firstMessage"]  # the specialist's result (scripted upstream)


def test_a_vapi_that_is_down_is_asked_once_then_recorded_failed(door: Any, vapi_api: FakeVapiServer) -> None:
    url, _ = door
    vapi_api.fail_status = 503
    httpx.post(f"{url}/vapi/events", **event({
        "type": "tool-calls", "call": {"id": "call-down", "customer": {"number": NUMBER}},
        "toolCallList": [{"id": "tc-1", "type": "function", "function": {
            "name": "schedule_callback",
            "arguments": {"phone_number": NUMBER, "specialist": "Priya", "task": "Anything."}}}],
    }), timeout=30)  # fmt: skip

    deadline = time.monotonic() + 30
    failed: list[Any] = []
    while not failed and time.monotonic() < deadline:
        time.sleep(0.3)
        failed = [p for p in httpx.get(f"{url}/api/processes", params={"status": "failed"}).json()
                  if p["name"] == "vapi-callback"]  # fmt: skip
    assert failed and "HTTP 503" in failed[0]["error"]
    # not resent: VAPI's create-call takes no idempotency key, and a 503 cannot prove no call was placed
    assert vapi_api.attempts == 1 and "after 1 attempt" in failed[0]["error"]


def test_no_secret_configured_is_503(start_runtime: Any, tmp_path: Path) -> None:
    runtime = start_runtime(make_settings(tmp_path))
    with serving(create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))) as url:
        answer = httpx.post(f"{url}/vapi/events", json={"message": {"type": "status-update"}})
        assert answer.status_code == 503 and "VAPI_SECRET" in answer.json()["error"]["message"]

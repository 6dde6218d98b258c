"""Outbound calls to platforms: webhooks retried (one idempotency key across the tries, Retry-After
honoured, a refusal final), and VAPI's create-call, which takes no idempotency key, resent only when the
request never reached VAPI, so a lost answer or a 5xx after the call was placed never rings twice."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import httpx
import pytest

from troupe.clients.outbound import OutboundFailed, post_json, retry_after_s, vapi_create_call
from troupe.config.settings import Settings
from troupe.testing.fake_vapi import FakeVapiServer

HOOK = "http://hooks.example/post"
NUMBER = "+14155550142"


class Replies:
    """A webhook receiver as an httpx.MockTransport: answers each request with the next scripted status
    (or raises the scripted exception) and keeps every request's headers."""

    def __init__(self, *script: int | Exception, headers: dict[str, str] | None = None) -> None:
        self.script = list(script)
        self.headers = headers or {}
        self.seen: list[httpx.Headers] = []
        self.transport = httpx.MockTransport(self.answer)

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.headers)
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, json={"ok": step < 300}, headers=self.headers if step >= 300 else None)


async def test_a_webhook_that_is_down_is_retried_with_one_idempotency_key() -> None:
    hook = Replies(503, httpx.ReadError("reset"), 502)
    assert await post_json(HOOK, {"text": "hi"}, retries=3, backoff_s=0.01, transport=hook.transport) == {"ok": True}
    keys = {headers["idempotency-key"] for headers in hook.seen}
    assert len(hook.seen) == 4 and len(keys) == 1 and keys != {""}
    given = Replies(500)
    await post_json(HOOK, {}, idempotency_key="post-7", backoff_s=0.01, transport=given.transport)
    assert [h["idempotency-key"] for h in given.seen] == ["post-7", "post-7"]


async def test_a_webhook_refusal_is_final_and_said_without_secrets() -> None:
    hook = Replies(401)
    with pytest.raises(OutboundFailed) as failed:
        await post_json(HOOK, {}, headers={"Authorization": "Bearer s3cret"}, retries=3, transport=hook.transport)
    assert str(failed.value) == "HTTP 401 from hooks.example after 1 attempt"
    assert len(hook.seen) == 1 and "s3cret" not in str(failed.value)


async def test_a_webhook_down_every_time_fails_after_its_retries() -> None:
    hook = Replies(503, 503, 503)
    with pytest.raises(OutboundFailed, match=r"HTTP 503 from hooks\.example after 3 attempts"):
        await post_json(HOOK, {}, retries=2, backoff_s=0.01, transport=hook.transport)


async def test_rate_limiting_waits_as_long_as_retry_after_asks() -> None:
    hook = Replies(429, headers={"Retry-After": "1"})
    began = time.perf_counter()
    await post_json(HOOK, {}, retries=2, backoff_s=0.01, transport=hook.transport)
    assert time.perf_counter() - began >= 0.95 and len(hook.seen) == 2


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("7") == 7.0
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 58 <= (retry_after_s(in_a_minute) or 0) <= 60
    assert retry_after_s(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None


# --- VAPI's create-call


@pytest.fixture
def vapi() -> Iterator[FakeVapiServer]:
    with FakeVapiServer() as server:
        yield server


def settings_for(vapi: FakeVapiServer, retries: int = 3) -> Settings:
    return Settings(vapi_api_key=vapi.api_key, vapi_base_url=vapi.base_url, outbound_retries=retries)


class RefusedFirst(httpx.AsyncBaseTransport):
    """A network that refuses the first `count` connections (the request never leaves), then works."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.refused = 0
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refused < self.count:
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_call_placed_then_answered_with_a_5xx_is_not_placed_again(vapi: FakeVapiServer) -> None:
    vapi.fail_after_create = 500
    with pytest.raises(OutboundFailed, match=r"HTTP 500 from 127\.0\.0\.1 after 1 attempt$"):
        await vapi_create_call(settings_for(vapi), NUMBER, "Tony", "Hi, it's Tony.")
    assert len(vapi.calls) == 1 and vapi.attempts == 1


async def test_a_call_placed_whose_answer_is_lost_is_not_placed_again(vapi: FakeVapiServer) -> None:
    vapi.stall_after_create_s = 1.5
    with pytest.raises(OutboundFailed, match=r"ReadTimeout reaching 127\.0\.0\.1 after 1 attempt$"):
        await vapi_create_call(settings_for(vapi), NUMBER, "Tony", "Hi, it's Tony.", timeout_s=0.3)
    assert len(vapi.calls) == 1 and vapi.attempts == 1


@pytest.mark.parametrize("status", [503, 429])
async def test_a_vapi_that_is_down_or_rate_limiting_is_asked_once(vapi: FakeVapiServer, status: int) -> None:
    vapi.fail_status = status  # it placed nothing, but a 5xx or 429 cannot prove that to a client
    with pytest.raises(OutboundFailed, match=f"HTTP {status}"):
        await vapi_create_call(settings_for(vapi), NUMBER, "Tony", "Hi")
    assert vapi.attempts == 1 and vapi.calls == []


async def test_a_call_that_never_reached_vapi_is_retried_and_placed_once(vapi: FakeVapiServer) -> None:
    network = RefusedFirst(2)
    call_id = await vapi_create_call(settings_for(vapi), NUMBER, "Tony", "Hi, it's Tony.", transport=network)
    assert call_id and network.refused == 2
    assert len(vapi.calls) == 1 and vapi.attempts == 1
    assert vapi.calls[0]["customer"] == {"number": NUMBER}


async def test_a_vapi_never_reached_fails_after_its_retries_naming_no_number(vapi: FakeVapiServer) -> None:
    network = RefusedFirst(10)
    with pytest.raises(OutboundFailed) as failed:
        await vapi_create_call(settings_for(vapi, retries=1), NUMBER, "Tony", "Hi", transport=network)
    assert str(failed.value) == "ConnectError reaching 127.0.0.1 after 2 attempts"
    assert network.refused == 2 and vapi.attempts == 0

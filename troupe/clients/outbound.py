"""Calls out to the platforms (VAPI's create-call API, Slack, social webhooks): retried by tenacity with
jittered backoff (or as long as a 429/503's Retry-After asks), then reported as failed. Never on a caller's
hot path. A request is resent only when resending cannot do the thing twice: see `may_resend`."""

from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from troupe.config.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_MAX_S = 30.0  # a longer Retry-After is waited this long, then the next try says what it says


class OutboundFailed(Exception):
    """The platform did not take the request after every retry. The message names no secret."""


class PlatformStatus(Exception):
    """A platform answered a request with a status that is not success."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status = response.status_code
        self.retry_after_s = retry_after_s(response.headers.get("retry-after"))


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its forms (delay-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class wait_retry_after(wait_base):  # lower-case, as tenacity's own waits are
    """Wait as long as the failure's Retry-After asks (capped), else as `fallback` says."""

    def __init__(self, hint: Callable[[BaseException], float | None], fallback: wait_base) -> None:
        self.hint = hint
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        asked = self.hint(failure) if failure is not None else None
        return min(asked, RETRY_AFTER_MAX_S) if asked is not None else self.fallback(retry_state)


def _asked_wait(exc: BaseException) -> float | None:
    if isinstance(exc, PlatformStatus) and exc.status in (429, 503):
        return exc.retry_after_s
    return None


def never_sent(exc: BaseException) -> bool:
    """The request provably never reached the platform: no connection was made (or none was free)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def may_resend(exc: BaseException) -> bool:
    """For a request the platform can take twice without harm (a webhook post with its idempotency key):
    the network failed, the platform rate limited, or it was down (5xx). A 4xx is a refusal: final."""
    if isinstance(exc, PlatformStatus):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, httpx.TransportError)


async def post_json(
    url: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 10.0,
    resend: Callable[[BaseException], bool] = may_resend,
    idempotency_key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """POST JSON; up to `retries` more tries while `resend` says the failure is worth one, each after a
    jittered exponential backoff (or the Retry-After asked). Every try carries the same Idempotency-Key
    header (`idempotency_key`, else a fresh UUID), so a receiver that honours it acts once. Returns the JSON
    answer; raises OutboundFailed."""
    host = httpx.URL(url).host
    sent = {"Idempotency-Key": idempotency_key or str(uuid.uuid4()), **(headers or {})}
    backoff = wait_exponential_jitter(multiplier=backoff_s, max=8 * backoff_s + 1, jitter=backoff_s)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_retry_after(_asked_wait, backoff),
        retry=retry_if_exception(resend),
        reraise=True,
    )
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
        try:
            async for attempt in retrying:
                with attempt:
                    response = await client.post(url, json=body, headers=sent)
                    if response.status_code >= 300:
                        raise PlatformStatus(response)
        except PlatformStatus as exc:
            raise OutboundFailed(f"{exc} from {host} after {_tries(retrying)}") from None
        except httpx.HTTPError as exc:
            raise OutboundFailed(f"{type(exc).__name__} reaching {host} after {_tries(retrying)}") from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {"data": data}


def _tries(retrying: AsyncRetrying) -> str:
    count = retrying.statistics.get("attempt_number", 1)
    return f"{count} attempt{'s' if count != 1 else ''}"


def vapi_call_body(settings: Settings, number: str, persona: str, message: str) -> dict[str, Any]:
    """VAPI's create-call body: an outbound phone call by a transient assistant that opens with the
    result and then talks through troupe's own custom LLM as the persona."""
    assistant: dict[str, Any] = {"name": f"{persona} (troupe)", "firstMessage": message[:1000]}
    if settings.public_url:
        assistant["model"] = {
            "provider": "custom-llm",
            "url": settings.public_url.rstrip("/"),
            "model": persona.lower(),
        }
    body: dict[str, Any] = {"customer": {"number": number}, "assistant": assistant, "name": f"{persona} callback"}
    if settings.vapi_phone_number_id:
        body["phoneNumberId"] = settings.vapi_phone_number_id
    return body


async def vapi_create_call(
    settings: Settings,
    number: str,
    persona: str,
    message: str,
    *,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str:
    """Ask VAPI to phone `number`; returns VAPI's call id. Raises OutboundFailed.

    VAPI's POST /call takes no idempotency key, so a request that reached VAPI is never sent again: a
    timeout or a 5xx may come after the call was placed, and a second try would ring the person twice.
    Only a request that never left (no connection made) is retried."""
    if settings.vapi_api_key is None:
        raise OutboundFailed("VAPI_API_KEY is not set")
    data = await post_json(
        settings.vapi_base_url.rstrip("/") + "/call",
        vapi_call_body(settings, number, persona, message),
        headers={"Authorization": f"Bearer {settings.vapi_api_key.get_secret_value()}"},
        retries=settings.outbound_retries,
        timeout_s=timeout_s,
        resend=never_sent,
        transport=transport,
    )
    return str(data.get("id", ""))

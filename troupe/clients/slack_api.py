"""Slack's Web API as troupe posts to it: chat.postMessage retried by tenacity while Slack rate limits
(honouring Retry-After) or cannot be reached, and a refusal said plainly. The Slack door and the life loops'
posts both use it.

chat.postMessage takes no idempotency key, so a post is resent only when Slack says it did not post it
(429 `ratelimited`) or the connection was never made. A 5xx (`fatal_error`, `internal_error`: "it's
possible some aspect of the operation succeeded", in Slack's words) or a timeout may follow a message that
did go out: resending it would post it twice, so it is reported failed instead."""

from __future__ import annotations

from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from troupe.clients.outbound import OutboundFailed, retry_after_s, wait_retry_after

BACKOFF_S = 0.5


def _slack_error(exc: SlackApiError) -> tuple[int, str | None]:
    """The HTTP status and Slack's `error` of a failed call (a proxy's HTML page has no `error`)."""
    data = getattr(exc.response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    return int(getattr(exc.response, "status_code", 200) or 200), error


def retryable(exc: BaseException) -> bool:
    """Slack said it did not post (rate limited), or the request never reached it: worth another try.
    Anything else (a refusal, a 5xx, a timeout) is final: the message may be in the channel already."""
    if isinstance(exc, SlackApiError):
        status, error = _slack_error(exc)
        return status == 429 or error == "ratelimited"
    return isinstance(exc, aiohttp.ClientConnectorError)


def retry_after(exc: BaseException) -> float | None:
    """How long a 429 asks troupe to wait, if it says."""
    if isinstance(exc, SlackApiError) and getattr(exc.response, "status_code", 0) == 429:
        headers = exc.response.headers or {}
        return retry_after_s(headers.get("retry-after") or headers.get("Retry-After"))
    return None


async def send(client: AsyncWebClient, *, retries: int, **message: Any) -> None:
    """chat.postMessage, retried while Slack rate limits or cannot be reached; OutboundFailed says why it
    gave up."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_retry_after(retry_after, wait_exponential_jitter(multiplier=BACKOFF_S, max=8, jitter=BACKOFF_S)),
        retry=retry_if_exception(retryable),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await client.chat_postMessage(**message)
    except Exception as exc:
        tries = retrying.statistics.get("attempt_number", 1)
        raise OutboundFailed(f"failed after {tries} attempt(s): {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        status, error = _slack_error(exc)
        return f"HTTP {status} {error or ''}".strip()
    return type(exc).__name__

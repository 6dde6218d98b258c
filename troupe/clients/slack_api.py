"""Slack's Web API as troupe posts to it: chat.postMessage retried while Slack is down or rate limiting
(honouring Retry-After), and a refusal said plainly. The Slack door and the life loops' posts both use it."""

from __future__ import annotations

import asyncio
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from troupe.clients.outbound import OutboundFailed

BACKOFF_S = 0.5


def _slack_error(exc: SlackApiError) -> tuple[int, str | None]:
    """The HTTP status and Slack's `error` of a failed call (a proxy's HTML page has no `error`)."""
    data = getattr(exc.response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    return int(getattr(exc.response, "status_code", 200) or 200), error


def retryable(exc: Exception) -> bool:
    """Slack down, rate limiting or the network: worth another try. A refusal (ok: false) is not."""
    if isinstance(exc, SlackApiError):
        status, error = _slack_error(exc)
        return status >= 500 or status == 429 or error in ("ratelimited", "fatal_error", "internal_error")
    return True


def retry_after(exc: Exception, attempt: int) -> float:
    if isinstance(exc, SlackApiError) and getattr(exc.response, "status_code", 0) == 429:
        value = (exc.response.headers or {}).get("retry-after") or (exc.response.headers or {}).get("Retry-After")
        if value and str(value).isdigit():
            return min(float(value), 30.0)
    return BACKOFF_S * 2**attempt


async def send(client: AsyncWebClient, *, retries: int, **message: Any) -> None:
    """chat.postMessage, retried with backoff while Slack is down; OutboundFailed says why it gave up."""
    for attempt in range(retries + 1):
        try:
            await client.chat_postMessage(**message)
            return
        except Exception as exc:
            if not retryable(exc) or attempt == retries:
                raise OutboundFailed(f"failed after {attempt + 1} attempt(s): {reason(exc)}") from None
            await asyncio.sleep(retry_after(exc, attempt))


def reason(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        status, error = _slack_error(exc)
        return f"HTTP {status} {error or ''}".strip()
    return type(exc).__name__

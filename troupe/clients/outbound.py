"""Calls out to the platforms (VAPI's create-call API, Slack, social webhooks): retried with backoff
when the platform is down, then reported as failed. Never on a caller's hot path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from troupe.config.settings import Settings

log = logging.getLogger(__name__)


class OutboundFailed(Exception):
    """The platform did not take the request after every retry. The message names no secret."""


async def post_json(
    url: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """POST with retries on connection errors, 429 and 5xx (exponential backoff); 4xx fails at once."""
    last = ""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for attempt in range(retries + 1):
            try:
                response = await client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__} reaching {httpx.URL(url).host}"
            else:
                if response.status_code < 300:
                    try:
                        data = response.json()
                    except ValueError:
                        data = {}
                    return data if isinstance(data, dict) else {"data": data}
                last = f"HTTP {response.status_code} from {httpx.URL(url).host}"
                if response.status_code < 500 and response.status_code != 429:
                    break
            if attempt < retries:
                await asyncio.sleep(backoff_s * 2**attempt)
    raise OutboundFailed(last)


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


async def vapi_create_call(settings: Settings, number: str, persona: str, message: str) -> str:
    """Ask VAPI to phone `number`; returns VAPI's call id. Raises OutboundFailed."""
    if settings.vapi_api_key is None:
        raise OutboundFailed("VAPI_API_KEY is not set")
    data = await post_json(
        settings.vapi_base_url.rstrip("/") + "/call",
        vapi_call_body(settings, number, persona, message),
        headers={"Authorization": f"Bearer {settings.vapi_api_key.get_secret_value()}"},
        retries=settings.outbound_retries,
    )
    return str(data.get("id", ""))

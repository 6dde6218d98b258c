"""A persona's public posts: shaped to 280 characters, checked against a block list and a per-persona
rate limit, and delivered to a Slack channel and/or a social webhook. Delivery that fails is kept by
the store and retried on the next tick of the life loop, so a post is never lost."""

from __future__ import annotations

import re
from datetime import datetime

from slack_sdk.web.async_client import AsyncWebClient

from troupe.clients.outbound import OutboundFailed, post_json
from troupe.clients.slack_api import send
from troupe.config.settings import Settings, platform_secret, split_list

MAX_CHARS = 280
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def shape(text: str, limit: int = MAX_CHARS) -> str:
    """One paragraph of at most `limit` characters: whole sentences if they fit, else whole words and '…'."""
    text = re.sub(r"[*_#`>]+", "", text)
    text = " ".join(text.split()).strip().strip('"').strip()
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= limit]
    if ends and ends[-1] >= limit // 3:
        return text[: ends[-1]]
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:-")
    return cut + "…"


def unsafe(text: str, blocked: tuple[str, ...]) -> str | None:
    """The first blocked word or phrase the post contains (whole words, any case), else None."""
    for phrase in blocked:
        if re.search(rf"(?<!\w){re.escape(phrase.lower())}(?!\w)", text.lower()):
            return phrase
    return None


def targets(settings: Settings) -> tuple[str, ...]:
    found = []
    if settings.life_slack_channel and settings.slack_bot_token:
        found.append("slack")
    if settings.social_webhook_url:
        found.append("webhook")
    return tuple(found)


async def deliver(settings: Settings, persona: str, text: str, target: str, created_at: datetime) -> None:
    """Raises OutboundFailed (naming no secret) if the target did not take the post after its retries."""
    if target == "slack":
        await _to_slack(settings, persona, text)
    elif target == "webhook":
        key = platform_secret("TROUPE_SOCIAL_KEY", persona)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"persona": persona, "text": text, "created_at": created_at.isoformat()}
        await post_json(settings.social_webhook_url, body, headers=headers, retries=settings.outbound_retries)
    else:
        raise OutboundFailed(f"unknown post target {target!r}")


async def _to_slack(settings: Settings, persona: str, text: str) -> None:
    assert settings.slack_bot_token is not None
    token = platform_secret("SLACK_BOT_TOKEN", persona) or settings.slack_bot_token.get_secret_value()
    client = AsyncWebClient(token=token, base_url=settings.slack_api_base_url, timeout=10, retry_handlers=[])
    await send(
        client, retries=settings.outbound_retries, channel=settings.life_slack_channel, text=text, username=persona
    )


def blocked_words(settings: Settings) -> tuple[str, ...]:
    return split_list(settings.post_blocked_words)

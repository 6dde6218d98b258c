"""Slack's plain logic: which events are someone talking, mentions, thread identity, admin words, the
model router's prompt and answer, and replies resent only when Slack did not post them (its signatures are
checked in tests/unit/test_webhook_signatures.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from troupe.clients.fake_model import ScriptedChatModel
from troupe.core.chat import ModelRequest
from troupe.core.persona_file import load_personas
from troupe.integrations.slack import (
    admin_word,
    choose_persona,
    incoming,
    parse_choice,
    persona_of_channel,
    post_reply,
    router_prompt,
    strip_mentions,
    thread_caller_id,
)
from troupe.testing.fake_slack import FakeSlackServer
from troupe.testing.loopback import free_port


@pytest.fixture(scope="module")
def catalog() -> Any:
    return load_personas()


def callback(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    base = {"type": "message", "channel": "C1", "user": "U1", "text": "hi", "ts": "1700000000.000100"}
    return {"type": "event_callback", "team_id": "T1", "event_id": "Ev1", "event": {**base, **event}, **extra}


def test_mentions_and_direct_messages_are_someone_talking() -> None:
    mention = incoming(callback({"type": "app_mention", "text": "<@U0BOT> hello", "thread_ts": "1699.1"}))
    assert mention is not None
    assert (mention.team, mention.channel, mention.user, mention.text) == ("T1", "C1", "U1", "<@U0BOT> hello")
    assert mention.thread_ts == "1699.1" and mention.event_id == "Ev1"
    direct = incoming(callback({"channel": "D1", "channel_type": "im"}))
    assert direct is not None and direct.thread_ts == direct.ts == "1700000000.000100"
    assert direct.caller_id == "slack-T1-D1-1700000000.000100"


@pytest.mark.parametrize(
    "event",
    [
        {"channel_type": "channel"},  # a channel message without a mention
        {"channel_type": "im", "bot_id": "B1"},  # a bot, ourselves included
        {"channel_type": "im", "subtype": "bot_message"},
        {"type": "app_mention", "bot_id": "B2"},
        {"channel_type": "im", "subtype": "message_changed"},
        {"channel_type": "im", "user": ""},
        {"type": "reaction_added"},
    ],
)
def test_bots_edits_and_other_events_are_ignored(event: dict[str, Any]) -> None:
    assert incoming(callback(event)) is None


def test_url_verification_is_not_a_message() -> None:
    assert incoming({"type": "url_verification", "challenge": "x"}) is None


def test_leading_mentions_are_stripped() -> None:
    assert strip_mentions("<@U0BOT> maya: what did we spend?") == "maya: what did we spend?"
    assert strip_mentions("<@U0BOT|troupe>, <@W123> hi") == "hi"
    assert strip_mentions("ask <@U9> later") == "ask <@U9> later"


def test_a_thread_is_a_safe_caller_id() -> None:
    assert thread_caller_id("T1", "C1", "1700000000.000100") == "slack-T1-C1-1700000000.000100"
    assert thread_caller_id("T 1", "C/1", "x" * 300).startswith("slack-T_1-C_1-")
    assert len(thread_caller_id("T", "C", "x" * 300)) == 160


def test_troupe_channels_name_their_persona(catalog: Any) -> None:
    assert persona_of_channel(catalog, "troupe-maya") == "Maya"
    assert persona_of_channel(catalog, "TROUPE-Jordan") == "Jordan"
    assert persona_of_channel(catalog, "troupe-nobody") is None
    assert persona_of_channel(catalog, "general") is None
    assert persona_of_channel(catalog, None) is None


def test_admin_words_only_from_admins() -> None:
    admins = ("UADMIN",)
    assert admin_word("agents", "UADMIN", admins) == "agents"
    assert admin_word(" Sessions. ", "UADMIN", admins) == "sessions"
    assert admin_word("agents", "USOMEONE", admins) is None
    assert admin_word("agents please", "UADMIN", admins) is None
    assert admin_word("clear", "UADMIN", ()) is None


def test_router_prompt_lists_every_persona_and_role(catalog: Any) -> None:
    prompt = router_prompt(catalog)
    for persona in catalog:
        assert f"- {persona.name}: {persona.role}" in prompt
    assert "brand" in prompt  # Maya's focus areas


def test_the_routers_answer_names_a_persona_or_nobody(catalog: Any) -> None:
    assert parse_choice(catalog, "Maya") == "Maya"
    assert parse_choice(catalog, "maya.") == "Maya"
    assert parse_choice(catalog, "I'd ask Jordan, or maybe Maya") == "Jordan"
    assert parse_choice(catalog, "Nobody here") is None
    assert parse_choice(catalog, "Mayan calendars") is None


async def test_choose_persona_asks_the_model_and_falls_back(catalog: Any) -> None:
    seen: list[ModelRequest] = []

    def answer(request: ModelRequest) -> str:
        seen.append(request)
        return "Maya" if "campaign" in (request.messages[-1].content or "") else "I am not sure."

    model = ScriptedChatModel(function=answer)
    assert await choose_persona(model, "fake", catalog, "how is the launch campaign going?", "Tony") == "Maya"
    assert seen[0].messages[0].role == "system" and "Maya" in (seen[0].messages[0].content or "")
    assert seen[0].messages[-1].content == "how is the launch campaign going?"
    assert await choose_persona(model, "fake", catalog, "hello", "Tony") == "Tony"

    class Down:
        name = "down"

        async def stream(self, request: ModelRequest) -> Any:
            raise ConnectionError("no model")
            yield  # pragma: no cover

    assert await choose_persona(Down(), "x", catalog, "campaign", "Tony") == "Tony"


@pytest.fixture
def slack() -> Iterator[FakeSlackServer]:
    with FakeSlackServer() as server:
        yield server


async def test_a_reply_is_resent_while_slack_cannot_be_reached() -> None:
    """No connection, so nothing was posted: worth another try, and the message goes out once."""
    late = FakeSlackServer(free_port())
    opener = threading.Timer(0.8, late.__enter__)
    opener.start()
    try:
        client = AsyncWebClient(token="xoxb-test", base_url=late.base_url, retry_handlers=[])
        assert await post_reply(client, "C1", "1.2", "hello", retries=6)
        assert late.fake.method_calls("chat.postMessage") == 1
        posted = late.fake.posted[-1]
        assert (posted.token, posted.channel, posted.thread_ts, posted.text) == ("xoxb-test", "C1", "1.2", "hello")
    finally:
        opener.join()
        late.__exit__(None, None, None)


async def test_a_reply_slack_may_have_posted_is_not_sent_twice(
    slack: FakeSlackServer, caplog: pytest.LogCaptureFixture
) -> None:
    """chat.postMessage takes no idempotency key, and a 5xx can follow a post that went out."""
    client = AsyncWebClient(token="xoxb-test", base_url=slack.base_url, retry_handlers=[])
    slack.fake.fail_next_posts(2, status=503)
    with caplog.at_level(logging.ERROR, logger="troupe.integrations.slack"):
        assert not await post_reply(client, "C1", "1.2", "hello", retries=3)
    assert slack.fake.method_calls("chat.postMessage") == 1
    assert "failed after 1 attempt(s): HTTP 503 fatal_error" in caplog.text


async def test_a_reply_slack_never_takes_is_logged_not_raised(
    slack: FakeSlackServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=slack.base_url, retry_handlers=[])
    slack.fake.fail_next_posts(5, status=429)
    with caplog.at_level(logging.ERROR, logger="troupe.integrations.slack"):
        assert not await post_reply(client, "C1", "1.2", "hello", retries=1)
    assert slack.fake.method_calls("chat.postMessage") == 2
    assert "failed after 2 attempt(s)" in caplog.text and "xoxb" not in caplog.text

    # a refusal (ok: false) is not retried
    slack.fake.reset()
    assert not await post_reply(client, "", "1.2", "hello", retries=3)
    assert slack.fake.method_calls("chat.postMessage") == 1


async def test_rate_limiting_waits_as_slack_asks(slack: FakeSlackServer) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=slack.base_url, retry_handlers=[])
    slack.fake.fail_next_posts(1, status=429)  # with Retry-After: 1
    began = time.perf_counter()
    assert await post_reply(client, "C1", "1.2", "hello", retries=2)
    assert time.perf_counter() - began >= 0.9
    assert slack.fake.method_calls("chat.postMessage") == 2


async def test_channel_names_come_from_conversations_info(slack: FakeSlackServer) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=slack.base_url, retry_handlers=[])
    slack.fake.channels["C9"] = "troupe-maya"
    info = await client.conversations_info(channel="C9")
    assert info["channel"]["name"] == "troupe-maya"

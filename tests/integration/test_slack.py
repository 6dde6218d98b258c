"""The Slack door end to end: signed Events API requests into a running troupe over loopback HTTP,
replies read back from a fake Slack Web API server that speaks Slack's wire format. Forged, stale and
replayed requests are answered nothing (a replay is acknowledged, as Slack requires, and not processed)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray

from tests.integration.conftest import make_settings
from troupe.app import Gateway, create_app
from troupe.integrations.slack import sign
from troupe.runtime import Runtime
from troupe.store import Store
from troupe.testing.fake_slack import TEAM_ID, FakeSlackServer, Posted
from troupe.testing.loopback import serving

SECRET = "shared-signing-secret"
MAYA_SECRET = "mayas-own-signing-secret"
ADMIN = "UADMIN"

_seq = itertools.count(1)


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlackServer]:
    with FakeSlackServer() as server:
        server.fake.channels.update({"CGEN": "general", "CMAYA": "troupe-maya"})
        yield server


@pytest.fixture(scope="module")
def runtime(ray_session: None, tmp_path_factory: pytest.TempPathFactory, slack: FakeSlackServer) -> Iterator[Any]:
    # no fake-model script: the fake echoes "<persona> here. You said: <text>", so replies name who answered,
    # and the router's completion ("Router here. ...") names nobody unless the message does
    settings = make_settings(
        tmp_path_factory.mktemp("slack"),
        slack_signing_secret=SECRET,
        slack_bot_token="xoxb-shared",
        slack_api_base_url=slack.base_url,
        slack_admin_users=f"{ADMIN}, UOTHERADMIN",
        max_body_bytes=65_536,
        max_sessions=128,
    )
    started = Runtime.start(settings)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def door(runtime: Any) -> Iterator[str]:
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh(slack: FakeSlackServer) -> None:
    slack.fake.reset()


def new_ts() -> str:
    return f"{int(time.time())}.{next(_seq):06d}"


def mention(text: str, *, channel: str = "CGEN", user: str = "U1", thread_ts: str | None = None) -> dict[str, Any]:
    ts = new_ts()
    event = {"type": "app_mention", "user": user, "text": f"<@U0TROUPE> {text}", "ts": ts, "channel": channel,
             "event_ts": ts}  # fmt: skip
    if thread_ts:
        event["thread_ts"] = thread_ts
    return callback(event)


def direct(text: str, *, channel: str = "D1", user: str = "U1", **extra: Any) -> dict[str, Any]:
    ts = new_ts()
    event = {"type": "message", "channel_type": "im", "user": user, "text": text, "ts": ts, "channel": channel}
    return callback({**event, **extra})


def callback(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": "legacy-unused", "team_id": TEAM_ID, "api_app_id": "A0TROUPE", "event": event,
        "type": "event_callback", "event_id": f"Ev{time.time_ns()}{next(_seq)}", "event_time": int(time.time()),
    }  # fmt: skip


def post(
    url: str,
    body: dict[str, Any] | bytes,
    *,
    secret: str = SECRET,
    path: str = "/slack/events",
    ts: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    raw, sent = signed(body, secret=secret, ts=ts, headers=headers)
    return httpx.post(url + path, content=raw, headers=sent, timeout=30)


def signed(body: dict[str, Any] | bytes, *, secret: str = SECRET, ts: str | None = None,
           headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """A request body and the headers Slack signs it with."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = ts or str(int(time.time()))
    sent = {"content-type": "application/json", "x-slack-request-timestamp": stamp,
            "x-slack-signature": sign(secret, raw, stamp), **(headers or {})}  # fmt: skip
    return raw, sent


def reply_to(slack: FakeSlackServer, body: dict[str, Any], nth: int = 0, timeout_s: float = 60.0) -> Posted:
    """The nth reply posted in the thread of this event (waits for it)."""
    event = body["event"]
    thread = event.get("thread_ts") or event["ts"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        posts = slack.fake.wait_for_posts(len(slack.fake.posted) + 1, timeout_s=0.2)
        in_thread = [p for p in posts if p.channel == event["channel"] and p.thread_ts == thread]
        if len(in_thread) > nth:
            return in_thread[nth]
    raise AssertionError(f"no reply in thread {thread}; posted: {slack.fake.posted}")


def test_url_verification_answers_the_challenge(door: str) -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    answer = post(door, {"token": "x", "challenge": challenge, "type": "url_verification"})
    assert answer.status_code == 200
    assert answer.json() == {"challenge": challenge}


def test_a_mention_gets_a_threaded_reply(door: str, slack: FakeSlackServer) -> None:
    body = mention("hello there")
    answer = post(door, body)
    assert answer.status_code == 200
    reply = reply_to(slack, body)
    # nobody named, #general names nobody, the router's answer names nobody: Tony, the default
    assert reply.text == "*Tony:* Tony here. You said: hello there"
    assert (reply.channel, reply.thread_ts, reply.token) == ("CGEN", body["event"]["ts"], "xoxb-shared")
    assert slack.fake.method_calls("conversations.info") == 1  # the channel's name, looked up once


def test_a_reply_in_a_thread_continues_its_session(door: str, slack: FakeSlackServer, runtime: Any) -> None:
    first = mention("maya: what did we spend?")
    post(door, first)
    assert reply_to(slack, first).text == "*Maya:* Maya here. You said: what did we spend?"
    follow = mention("and last month?", thread_ts=first["event"]["ts"])
    post(door, follow)
    reply = reply_to(slack, follow, nth=1)
    assert reply.text == "*Maya:* Maya here. You said: and last month?"  # the thread stays with Maya
    assert reply.thread_ts == first["event"]["ts"]
    caller = f"slack-{TEAM_ID}-CGEN-{first['event']['ts']}"
    sessions = [s for s in _sessions(runtime) if s.caller_id == caller]
    assert [s.agent for s in sessions] == ["Maya"]


def test_a_thread_stays_with_its_persona_on_another_door_replica(
    door: str, slack: FakeSlackServer, runtime: Any
) -> None:
    """Slack's retry or the next message may reach another replica: the thread's persona is in the store."""
    first = mention("maya: how are the ads doing?")
    post(door, first)
    assert reply_to(slack, first).text.startswith("*Maya:*")
    other = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(other) as second_door:
        follow = mention("and the budget?", thread_ts=first["event"]["ts"])
        post(second_door, follow)
        assert reply_to(slack, follow, nth=1).text == "*Maya:* Maya here. You said: and the budget?"


def test_a_troupe_channel_routes_to_its_persona(door: str, slack: FakeSlackServer) -> None:
    body = mention("how is the launch going?", channel="CMAYA")
    post(door, body)
    assert reply_to(slack, body).text == "*Maya:* Maya here. You said: how is the launch going?"
    again = mention("and the brand?", channel="CMAYA")
    post(door, again)
    assert reply_to(slack, again).text.startswith("*Maya:*")
    assert slack.fake.method_calls("conversations.info") == 1  # cached


def test_a_direct_message_is_answered_in_its_thread(door: str, slack: FakeSlackServer) -> None:
    body = direct("jordan: are we on track?")
    assert post(door, body).status_code == 200
    reply = reply_to(slack, body)
    assert reply.text == "*Jordan:* Jordan here. You said: are we on track?"
    assert reply.channel == "D1" and reply.thread_ts == body["event"]["ts"]


def test_bad_or_missing_signatures_are_refused_and_nothing_runs(door: str, slack: FakeSlackServer) -> None:
    body = mention("forged")
    wrong = post(door, body, secret="not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_signature"
    raw = json.dumps(mention("unsigned")).encode()
    unsigned = httpx.post(f"{door}/slack/events", content=raw, headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    stale = post(door, mention("old news"), ts=str(int(time.time()) - 600))
    assert stale.status_code == 401
    early = post(door, mention("from the future"), ts=str(int(time.time()) + 600))
    assert early.status_code == 401
    odd = post(door, mention("odd stamp"), ts="soon")
    assert odd.status_code == 401 and odd.json()["error"]["code"] == "invalid_signature"
    tampered = mention("x")
    stamp = str(int(time.time()))
    headers = {"x-slack-request-timestamp": stamp, "x-slack-signature": sign(SECRET, b"{}", stamp)}
    assert post(door, tampered, headers=headers).status_code == 401
    # a signed message in the same channel afterwards is answered; nothing before it was
    sentinel = mention("sentinel")
    post(door, sentinel)
    reply_to(slack, sentinel)
    assert [p.text for p in slack.fake.posted] == ["*Tony:* Tony here. You said: sentinel"]


def test_a_retried_delivery_is_processed_once(door: str, slack: FakeSlackServer) -> None:
    body = mention("just once please")
    first = post(door, body)
    retries = [post(door, body, headers={"x-slack-retry-num": str(n), "x-slack-retry-reason": "http_timeout"})
               for n in (1, 2, 3)]  # fmt: skip
    assert first.status_code == 200 and all(r.status_code == 200 for r in retries)
    sentinel = mention("sentinel")  # the channel's queue is in order: once this is answered, so is the rest
    post(door, sentinel)
    reply_to(slack, sentinel)
    assert [p.text for p in slack.fake.posted] == [
        "*Tony:* Tony here. You said: just once please",
        "*Tony:* Tony here. You said: sentinel",
    ]


def test_a_replayed_request_is_acknowledged_and_not_processed(door: str, slack: FakeSlackServer) -> None:
    """The same signed request sent again within the window (a captured one, or a duplicate on the way):
    Slack wants a 200 for anything it may have sent, and the store's event id makes it a no-op."""
    body = mention("only the first counts", channel="CREPLAY")
    slack.fake.channels["CREPLAY"] = "replay"
    raw, headers = signed(body)
    answers = [httpx.post(f"{door}/slack/events", content=raw, headers=headers, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    sentinel = mention("sentinel", channel="CREPLAY")
    post(door, sentinel)
    reply_to(slack, sentinel)
    assert [p.text for p in slack.fake.posted] == [  # one turn taken and answered, not three
        "*Tony:* Tony here. You said: only the first counts",
        "*Tony:* Tony here. You said: sentinel",
    ]


def test_bot_messages_are_ignored(door: str, slack: FakeSlackServer) -> None:
    for event in (
        direct("I am a bot", channel="D2", bot_id="B0OTHER"),
        direct("me too", channel="D2", subtype="bot_message"),
        direct("our own echo", channel="D2", bot_id="B0TROUPE", user="U0TROUPE"),
        direct("edited", channel="D2", subtype="message_changed"),
    ):
        assert post(door, event).status_code == 200
    sentinel = direct("a person", channel="D2")
    post(door, sentinel)
    reply_to(slack, sentinel)
    assert [p.text for p in slack.fake.posted] == ["*Tony:* Tony here. You said: a person"]


def test_admin_words_from_allowed_users(door: str, slack: FakeSlackServer, runtime: Any) -> None:
    agents = mention("agents", user=ADMIN)
    post(door, agents)
    listing = reply_to(slack, agents).text
    assert "• *Maya* — Chief Marketing Officer" in listing
    assert all(f"*{name}*" in listing for name in runtime.catalog.names())

    # from anyone else the word is just something said to a persona
    plain = mention("agents", user="U1")
    post(door, plain)
    assert reply_to(slack, plain).text == "*Tony:* Tony here. You said: agents"

    helped = mention("help", user="UOTHERADMIN")
    post(door, helped)
    assert "`clear`" in reply_to(slack, helped).text

    # a conversation, then `sessions` and `clear` in its thread: ended now and summarised into memory
    talk = mention("maya: remember the blue logo", user=ADMIN)
    post(door, talk)
    reply_to(slack, talk)
    thread = talk["event"]["ts"]
    listed = mention("sessions", user=ADMIN, thread_ts=thread)
    post(door, listed)
    caller = f"slack-{TEAM_ID}-CGEN-{thread}"
    assert f"*Maya* with `{caller}`" in reply_to(slack, listed, nth=1).text
    clear = mention("clear", user=ADMIN, thread_ts=thread)
    slack.fake.reset()
    post(door, clear)
    assert reply_to(slack, clear).text == "Cleared this thread's session with Maya; a summary was kept."
    assert caller not in {s.caller_id for s in _sessions(runtime)}
    memories = _run(_recall(runtime.settings.resolved_database_url, "Maya", caller))
    assert memories and memories[0].kind == "summary"


def test_a_personas_own_app(door: str, slack: FakeSlackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    unconfigured = post(door, mention("hi"), path="/slack/events/jordan", secret="whatever")
    assert unconfigured.status_code == 503
    assert "SLACK_SIGNING_SECRET_JORDAN" in unconfigured.json()["error"]["message"]
    assert post(door, mention("hi"), path="/slack/events/zed").status_code == 404

    monkeypatch.setenv("SLACK_SIGNING_SECRET_MAYA", MAYA_SECRET)
    monkeypatch.setenv("SLACK_BOT_TOKEN_MAYA", "xoxb-maya")
    # the shared app's secret does not open Maya's door
    assert post(door, mention("hi"), path="/slack/events/maya").status_code == 401
    body = mention("tony: who answers here?")
    assert post(door, body, path="/slack/events/maya", secret=MAYA_SECRET).status_code == 200
    reply = reply_to(slack, body)
    # her own app: Maya answers whatever the message says, as herself, with her own token
    assert reply.text == "Maya here. You said: tony: who answers here?"
    assert reply.token == "xoxb-maya"


def test_malformed_and_oversized_bodies(door: str) -> None:
    broken = post(door, b'{"type": "event_callback", ')
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert post(door, b"[1, 2]").status_code == 400
    big = post(door, {"type": "event_callback", "padding": "x" * 70_000})
    assert big.status_code == 413


def test_unconfigured_slack_is_503(runtime: Any) -> None:
    settings = runtime.settings.model_copy(update={"slack_signing_secret": None, "slack_bot_token": None})
    app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        answer = post(url, mention("hi"))
        assert answer.status_code == 503
        assert "SLACK_SIGNING_SECRET" in answer.json()["error"]["message"]
    # a signing secret but no bot token: the URL can be verified, events cannot be answered
    settings = runtime.settings.model_copy(update={"slack_bot_token": None})
    app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        assert post(url, {"type": "url_verification", "challenge": "c"}).json() == {"challenge": "c"}
        answer = post(url, mention("hi"))
        assert answer.status_code == 503 and "SLACK_BOT_TOKEN" in answer.json()["error"]["message"]


def test_slack_rate_limiting_is_waited_out(door: str, slack: FakeSlackServer) -> None:
    slack.fake.fail_next_posts(2, status=429)  # with Retry-After: 1; a 5xx is not resent (tests/unit)
    body = mention("are you there?")
    assert post(door, body).status_code == 200
    assert reply_to(slack, body).text == "*Tony:* Tony here. You said: are you there?"
    assert slack.fake.method_calls("chat.postMessage") == 3


def test_concurrent_messages_in_a_channel_are_queued_not_dropped(door: str, slack: FakeSlackServer) -> None:
    thread = new_ts()
    bodies = [mention(f"message {n}", channel="CBUSY", thread_ts=thread) for n in range(4)]
    slack.fake.channels["CBUSY"] = "busy"
    answers: list[int] = []
    posters = [threading.Thread(target=lambda b=b: answers.append(post(door, b).status_code)) for b in bodies]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    assert answers == [200] * 4
    posted = slack.fake.wait_for_posts(4, timeout_s=90)
    assert sorted(p.text for p in posted) == sorted(f"*Tony:* Tony here. You said: message {n}" for n in range(4))


def test_a_burst_in_one_thread_is_acknowledged_and_all_answered(door: str, slack: FakeSlackServer) -> None:
    """Each event gets its 200 while earlier events' turns still run behind it; every one is answered.
    How fast the acknowledgement is: bench/platform_latency.py."""
    thread = new_ts()
    for n in range(20):
        answer = post(door, mention(f"burst {n}", channel="CTIME", thread_ts=thread))
        assert answer.status_code == 200
    assert len(slack.fake.wait_for_posts(20, timeout_s=120)) == 20


# --- helpers


def _sessions(runtime: Any) -> list[Any]:
    return list(ray.get(runtime.orchestrator.list_sessions.remote()))


async def _recall(url: str, persona: str, subject: str) -> list[Any]:
    store = await Store.open(url, migrate=False)
    try:
        return await store.recall(persona, subject=subject)
    finally:
        await store.close()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)

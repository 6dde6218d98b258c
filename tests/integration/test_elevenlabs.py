"""ElevenLabs end to end through a running troupe: its custom-LLM requests (speakable pieces, identity),
signed post-call webhooks into memory (forged, stale and replayed ones refused), the voice bridge to a
fake Conversational AI server on loopback (opened with a single-use ticket or a bearer key, from allowed
Origins only), and `troupe say` against a fake text-to-speech endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.conftest import make_settings, write_script
from troupe.app import Gateway, create_app
from troupe.cli import main as cli_main
from troupe.integrations.tickets import TicketBook
from troupe.runtime import Runtime
from troupe.store import Store
from troupe.testing.fake_elevenlabs import (
    FAKE_MP3,
    Behaviour,
    FakeElevenLabsServer,
    post_call_transcription,
    signature_header,
)
from troupe.testing.loopback import serving

SECRET = "whsec-elevenlabs-test"
ORIGIN = "https://app.example.com"
GREETING = "Hello there. This is Tony speaking! How can I help you today?"
SLOW = "so I was thinking that we could maybe meet on the terrace around noon"
CLIENT_KEY = "voice-client-key-0123456789"
PANEL_KEY = "voice-panel-key-0123456789"
KEYS = f"voice:client:{CLIENT_KEY}, panel:operator:{PANEL_KEY}"
TICKETS = TicketBook()  # the Gateway's book of every door these tests start


@pytest.fixture(scope="module")
def eleven() -> Iterator[FakeElevenLabsServer]:
    with FakeElevenLabsServer() as server:
        yield server


@pytest.fixture(scope="module")
def runtime(ray_session: None, tmp_path_factory: pytest.TempPathFactory, eleven: FakeElevenLabsServer) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("elevenlabs")
    script = write_script(
        tmp / "script.json",
        [
            {"when": "summarise", "reply": "Ana wants a table for four on Friday at eight."},
            {"when": "slowly", "reply": {"content": SLOW, "chunk_delay_s": 0.12}},
            {"when": "", "reply": GREETING},
        ],
    )
    settings = make_settings(
        tmp,
        fake_script=script,
        rate_limit_per_minute=0,
        elevenlabs_webhook_secret=SECRET,
        elevenlabs_api_key=eleven.api_key,
        elevenlabs_base_url=eleven.base_url,
        cors_origins=ORIGIN,
    )
    started = Runtime.start(settings)
    yield started
    started.stop()


@contextmanager
def door_with(runtime: Any, tickets: TicketBook = TICKETS, **changes: Any) -> Iterator[str]:
    settings = runtime.settings.model_copy(update=changes)
    gateway = Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client(), tickets=tickets)
    with serving(create_app(gateway)) as url:
        yield url


@contextmanager
def keyed_door(runtime: Any, tickets: TicketBook = TICKETS) -> Iterator[str]:
    """A door that is not --insecure: it has a key, so the bridge wants a ticket or that key."""
    with door_with(runtime, tickets, api_keys=SecretStr(KEYS), insecure=False) as url:
        yield url


@pytest.fixture(scope="module")
def door(runtime: Any) -> Iterator[str]:
    with door_with(runtime) as url:
        yield url


@pytest.fixture(autouse=True)
def _fresh_behaviour(eleven: FakeElevenLabsServer) -> None:
    eleven.fake.behaviour = Behaviour()


# ---------------------------------------------------------------------------------------- custom LLM


def llm_body(content: str, **extra: Any) -> dict[str, Any]:
    """What ElevenLabs' custom LLM posts: OpenAI fields, streamed, plus its own identity fields."""
    return {
        "model": "troupe",
        "stream": True,
        "messages": [{"role": "system", "content": "You are a helpful agent."}, {"role": "user", "content": content}],
        **extra,
    }


def stream_pieces(url: str, body: dict[str, Any], path: str = "/v1/elevenlabs-llm") -> tuple[float, list[str]]:
    """(seconds to the first content chunk, every content chunk) of a streamed request."""
    began = time.perf_counter()
    first, pieces = None, []
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                content = choices[0]["delta"].get("content") if choices else None
                if content:
                    first = first or time.perf_counter()
                    pieces.append(content)
    assert first is not None
    return first - began, pieces


def sessions(url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/api/sessions").json()


def test_sdk_streams_sentences_for_the_persona_and_user(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1/elevenlabs-llm", api_key="unused")
    stream = client.chat.completions.create(
        model="custom-llm",
        messages=[{"role": "user", "content": "Hi!"}],
        stream=True,
        extra_body={"user_id": "alice", "elevenlabs_extra_body": {"persona": "Maya"}},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hello there. ", "This is Tony speaking! ", "How can I help you today?"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert any(s["caller_id"] == "user-alice" and s["agent"] == "Maya" for s in sessions(door))


def test_slow_words_come_out_by_the_time_bound_never_split(door: str) -> None:
    _, pieces = stream_pieces(door, llm_body("Say it slowly", user_id="alice"))
    assert "".join(pieces) == SLOW
    assert 2 <= len(pieces) < len(SLOW.split())  # the time bound, not word by word nor all at the end
    words = set(SLOW.split())
    for piece in pieces:
        assert all(word in words for word in piece.split()), piece  # whole words only


def test_identity_from_the_extra_body_and_errors(door: str) -> None:
    extra = {"elevenlabs_extra_body": {"phone": "+1 (415) 555-0199", "persona": "jordan"}}
    _, pieces = stream_pieces(door, llm_body("Hello", **extra))
    assert "".join(pieces) == GREETING
    assert any(s["caller_id"] == "+14155550199" and s["agent"] == "Jordan" for s in sessions(door))

    plain = httpx.post(
        f"{door}/v1/elevenlabs-llm", json={**llm_body("Hi", user_id="alice"), "stream": False}, timeout=30
    )
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == GREETING

    unknown = httpx.post(
        f"{door}/v1/elevenlabs-llm", json=llm_body("x", elevenlabs_extra_body={"persona": "Zed"}), timeout=30
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "elevenlabs_extra_body.persona"
    odd = httpx.post(
        f"{door}/v1/elevenlabs-llm",
        json=llm_body("Hi", user_id="alice", elevenlabs_extra_body="not a dict"),
        timeout=30,
    )
    assert odd.status_code == 200
    assert httpx.post(f"{door}/v1/elevenlabs-llm", content=b"{nope").status_code == 400


def test_the_llm_door_needs_the_api_key_when_keys_are_set(runtime: Any) -> None:
    with keyed_door(runtime) as url:
        assert httpx.post(f"{url}/v1/elevenlabs-llm", json=llm_body("Hi")).status_code == 401
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        with httpx.stream(
            "POST", f"{url}/v1/elevenlabs-llm", json=llm_body("Hi", user_id="alice"), headers=headers, timeout=30
        ) as r:
            assert r.status_code == 200


# ---------------------------------------------------------------------------------------- webhook


def send_webhook(url: str, body: bytes, *, secret: str = SECRET, stamp: int | None = None) -> httpx.Response:
    headers = {"ElevenLabs-Signature": signature_header(secret, body, stamp), "Content-Type": "application/json"}
    return httpx.post(f"{url}/elevenlabs/webhook", content=body, headers=headers, timeout=30)


def remembered(runtime: Any, persona: str, caller: str) -> list[Any]:
    async def recall() -> Any:
        store = await Store.open(runtime.settings.resolved_database_url)
        try:
            return await store.recall(persona, subject=caller)
        finally:
            await store.close()

    return asyncio.run(recall())


def poll(fn: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_a_signed_transcription_is_remembered_once(door: str, runtime: Any) -> None:
    event = post_call_transcription(
        "conv_good_1",
        [("agent", "Hi, Maya here."), ("user", "I'd like a table for four on Friday at eight.")],
        dynamic_variables={"persona": "Maya", "system__caller_id": "+1 415 555 0123"},
    )
    body = json.dumps(event).encode()
    stamp = int(time.time())
    answer = send_webhook(door, body, stamp=stamp)
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    replay = send_webhook(door, body, stamp=stamp)  # the very same signed delivery again
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "replayed_webhook"
    retry = send_webhook(door, body, stamp=stamp + 1)  # ElevenLabs retries, signed anew: the same conversation
    assert retry.status_code == 200 and retry.json()["status"] == "duplicate"

    memories = poll(lambda: remembered(runtime, "Maya", "+14155550123"))
    assert "table for four" in memories[0].content and memories[0].source == "elevenlabs"
    time.sleep(1.0)
    assert len(remembered(runtime, "Maya", "+14155550123")) == 1  # neither the replay nor the retry counted


def test_bad_signatures_are_refused_and_nothing_is_processed(door: str, runtime: Any) -> None:
    event = post_call_transcription("conv_forged", [("user", "hello")], phone="+14155550142")
    body = json.dumps(event).encode()
    assert send_webhook(door, body, secret="not-the-secret").status_code == 401
    stale = send_webhook(door, body, stamp=int(time.time()) - 3600)
    assert stale.status_code == 401 and "window" in stale.json()["error"]["message"]
    late = send_webhook(door, body, stamp=int(time.time()) - 600)  # inside the SDK's 30 minutes, not troupe's 5
    assert late.status_code == 401 and "window" in late.json()["error"]["message"]
    early = send_webhook(door, body, stamp=int(time.time()) + 600)  # the SDK alone would take it
    assert early.status_code == 401 and "window" in early.json()["error"]["message"]
    tampered = httpx.post(
        f"{door}/elevenlabs/webhook",
        content=body.replace(b"hello", b"HELLO"),
        headers={"ElevenLabs-Signature": signature_header(SECRET, body)},
    )
    assert tampered.status_code == 401
    time.sleep(1.0)
    assert remembered(runtime, "Tony", "+14155550142") == []  # nothing refused reached the memory
    assert httpx.post(f"{door}/elevenlabs/webhook", content=body).status_code == 401
    # none of those claimed the conversation: the genuine delivery is still processed
    assert send_webhook(door, body).json()["status"] == "accepted"
    assert poll(lambda: remembered(runtime, "Tony", "+14155550142"))  # once the genuine one came


def test_malformed_and_unknown_webhooks(door: str, runtime: Any) -> None:
    malformed = send_webhook(door, b"{not json")
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]
    unknown = send_webhook(door, json.dumps({"type": "post_call_audio", "data": {"conversation_id": "c"}}).encode())
    assert unknown.status_code == 200 and unknown.json() == {"status": "ignored", "type": "post_call_audio"}
    no_data = send_webhook(door, json.dumps({"type": "post_call_transcription"}).encode())
    assert no_data.status_code == 400
    with door_with(runtime, elevenlabs_webhook_secret=None) as url:
        off = send_webhook(url, json.dumps({"type": "x"}).encode())
        assert off.status_code == 503 and "ELEVENLABS_WEBHOOK_SECRET" in off.json()["error"]["message"]


# ---------------------------------------------------------------------------------------- voice bridge


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ws_url(http_url: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"ws{http_url.removeprefix('http')}/ws/elevenlabs?{query}"


async def next_of(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message.get("type") == kind:
            return message


async def test_bridge_relays_both_ways_and_answers_pings(
    door: str, eleven: FakeElevenLabsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELEVENLABS_AGENT_ID_MAYA", "agent_maya")
    before = len(eleven.fake.conversations)
    ticket = TICKETS.issue("test:browser")
    async with connect(ws_url(door, persona="maya", user_id="alice", ticket=ticket), origin=ORIGIN) as ws:  # type: ignore[arg-type]
        started = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert started["type"] == "conversation_initiation_metadata"
        await ws.send(json.dumps({"user_audio_chunk": base64.b64encode(b"caller-audio-1").decode()}))
        heard = await next_of(ws, "user_transcript")
        assert heard["user_transcription_event"]["user_transcript"] == eleven.behaviour.transcript
        said = await next_of(ws, "agent_response")
        assert said["agent_response_event"]["agent_response"] == eleven.behaviour.reply
        audio = await next_of(ws, "audio")
        assert base64.b64decode(audio["audio_event"]["audio_base_64"]) == eleven.behaviour.audio
        await ws.send(b"raw-pcm-frame")  # a binary frame is audio too
        await next_of(ws, "audio")
        await ws.send(json.dumps({"type": "user_message", "text": "typed hello"}))
        typed = await next_of(ws, "user_transcript")
        assert typed["user_transcription_event"]["user_transcript"] == "typed hello"
        await ws.send(json.dumps({"type": "conversation_initiation_client_data", "dynamic_variables": {}}))
        await ws.close(code=1000)

    conversation = eleven.fake.conversations[before]
    assert await asyncio.to_thread(conversation.ended.wait, 10)
    assert conversation.closed_by_client == 1000  # the caller hung up: troupe ended the agent's side
    assert conversation.agent_id == "agent_maya"
    assert conversation.audio == b"caller-audio-1raw-pcm-frame"
    assert conversation.pongs == [1]  # troupe answered ElevenLabs' ping itself
    start = conversation.received[0]
    assert start["type"] == "conversation_initiation_client_data"
    assert start["dynamic_variables"] == {"persona": "Maya", "user_id": "alice"}
    assert start["custom_llm_extra_body"] == {"persona": "Maya", "user_id": "alice"}
    assert len(conversation.of_type("conversation_initiation_client_data")) == 1  # the client's was dropped
    assert not conversation.of_type("ping")


async def test_agent_hanging_up_closes_the_client(
    runtime: Any, eleven: FakeElevenLabsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELEVENLABS_AGENT_ID_TONY", "agent_tony")
    eleven.behaviour.close_after_replies = 1
    with keyed_door(runtime) as url:  # no Origin and a bearer key: a client that is not a browser
        async with connect(ws_url(url, persona="Tony"), additional_headers=bearer(CLIENT_KEY)) as ws:
            await ws.send(json.dumps({"user_audio_chunk": base64.b64encode(b"bye").decode()}))
            await next_of(ws, "audio")
            with pytest.raises(ConnectionClosed):
                while True:  # what the agent still says before it hangs up, then the close
                    await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1000 and ws.close_reason == "conversation ended"
    start = eleven.fake.conversations[-1].received[0]
    assert start["user_id"].startswith("voice-")  # an anonymous caller keeps one id for the conversation


async def test_bridge_refusals(door: str, runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_AGENT_ID_MAYA", "agent_maya")
    monkeypatch.delenv("ELEVENLABS_AGENT_ID_RILEY", raising=False)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(door, persona="maya"), origin="https://evil.example.com"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403

    async def closed_with(url: str) -> tuple[int | None, str | None]:
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code, ws.close_reason

    code, reason = await closed_with(ws_url(door, persona="riley"))
    assert code == 1011 and reason is not None and "ELEVENLABS_AGENT_ID_RILEY" in reason
    code, reason = await closed_with(ws_url(door, persona="nobody"))
    assert code == 1008 and reason is not None and "Unknown persona" in reason

    with door_with(runtime, elevenlabs_api_key=None) as url:
        code, reason = await closed_with(ws_url(url, persona="maya"))
        assert code == 1011 and reason is not None and "ELEVENLABS_API_KEY" in reason
    with door_with(runtime, elevenlabs_api_key=SecretStr("not-the-key")) as url:
        code, reason = await closed_with(ws_url(url, persona="maya"))  # ElevenLabs refuses the signed URL
        assert code == 1011 and reason == "Could not start an ElevenLabs conversation."


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def opens(url: str, **options: Any) -> bool:
    """True when the bridge lets the client in (and the agent's conversation starts); False when the
    handshake is refused (403, before the socket is accepted)."""
    try:
        async with connect(url, **options) as ws:
            return bool(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "conversation_initiation_metadata")
    except InvalidStatus as refused:
        assert refused.response.status_code == 403
        return False


async def test_the_bridge_takes_a_ticket_once_or_a_bearer_key(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_AGENT_ID_MAYA", "agent_maya")
    clock = Clock()
    book = TicketBook(clock=clock)
    with keyed_door(runtime, book) as url:
        bridge = ws_url(url, persona="maya")
        assert not await opens(bridge)  # nothing: closed
        assert not await opens(ws_url(url, persona="maya", key=CLIENT_KEY))  # a key in the URL is not read
        assert await opens(bridge, additional_headers=bearer(CLIENT_KEY))
        assert not await opens(bridge, additional_headers=bearer("not-a-key-0123456789abc"))

        ticket = book.issue("voice")
        with_ticket = ws_url(url, persona="maya", ticket=ticket)
        assert not await opens(with_ticket, origin="https://evil.example.com")  # a foreign page
        assert await opens(with_ticket, origin=ORIGIN)  # (the foreign page's attempt did not use it up)
        assert not await opens(with_ticket, origin=ORIGIN)  # once only
        assert await opens(ws_url(url, persona="maya", ticket=book.issue("voice")), origin=url)  # the door's page
        late = book.issue("voice")
        clock.now += 61
        assert not await opens(ws_url(url, persona="maya", ticket=late), origin=ORIGIN)  # expired
        assert not await opens(ws_url(url, persona="maya", ticket="made-up"), origin=ORIGIN)


async def test_a_ticket_from_the_door_opens_the_bridge_once(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a browser page does: ask POST /api/ws-tickets with its key, then open the socket with it."""
    monkeypatch.setenv("ELEVENLABS_AGENT_ID_MAYA", "agent_maya")
    with keyed_door(runtime, TicketBook()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            assert (await http.post("/api/ws-tickets")).status_code == 401
            issued = await http.post("/api/ws-tickets", headers=bearer(PANEL_KEY))
        assert issued.status_code == 201
        bridge = ws_url(url, persona="maya", ticket=issued.json()["ticket"])
        assert await opens(bridge, origin=ORIGIN)
        assert not await opens(bridge, origin=ORIGIN)


# ---------------------------------------------------------------------------------------- troupe say


def test_say_writes_the_personas_speech(
    tmp_path: Path, eleven: FakeElevenLabsServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", eleven.api_key)
    monkeypatch.setenv("ELEVENLABS_BASE_URL", eleven.base_url)
    out = tmp_path / "maya.mp3"
    assert cli_main(["say", "maya", "Good morning, team.", "--out", str(out)]) == 0
    assert out.read_bytes() == FAKE_MP3
    sent = eleven.fake.tts_requests[-1]
    assert sent["voice_id"] == "EXAVITQu4vr4xnSDxMaL"  # Maya's voice_id from her persona file
    assert sent["body"]["text"] == "Good morning, team." and sent["query"]["output_format"] == "mp3_44100_128"

    monkeypatch.setenv("ELEVENLABS_API_KEY", "wrong-key")
    refused = tmp_path / "refused.mp3"
    assert cli_main(["say", "tony", "Hi", "--out", str(refused)]) == 2
    assert "HTTP 401" in capsys.readouterr().err and not refused.exists()
    monkeypatch.delenv("ELEVENLABS_API_KEY")
    assert cli_main(["say", "tony", "Hi", "--out", str(refused)]) == 2
    assert "ELEVENLABS_API_KEY" in capsys.readouterr().err

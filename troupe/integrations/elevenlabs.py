"""ElevenLabs, spoken as ElevenLabs speaks: its custom-LLM requests (`/v1/elevenlabs-llm`, answered in
speakable pieces), its signed post-call webhooks (the transcript goes into the persona's memory of the
caller), a voice bridge (`WS /ws/elevenlabs`) from a browser or phone to a persona's Conversational AI
agent, and text to speech in a persona's voice (`troupe say`).

A webhook's signature is checked by the ElevenLabs SDK's own helper (`webhooks.construct_event`), its
timestamp against TROUPE_WEBHOOK_TOLERANCE_S, and the same signed delivery is accepted once. The voice
bridge takes a single-use ticket (`?ticket=`, from `gateway.tickets`) or a bearer key, never a key in its
URL, and only from the allowed Origins or the door's own page."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import StreamingResponse

from troupe.clients.openai_api import ChatCompletionRequest, ChunkWriter
from troupe.clients.speakable import speakable
from troupe.config.settings import Settings, platform_secret
from troupe.core.caller import CallLookup, normalise_phone, resolve_caller_id
from troupe.core.errors import InvalidRequest, NotConfigured, PersonaNotFound, TroupeError
from troupe.core.messages import Delta, Failed, TurnEvent
from troupe.integrations.completions import (
    REQUEST_BODY,
    collect,
    error_response,
    observed,
    parse_request,
    resolve_persona,
    sse,
    turn_of,
)
from troupe.integrations.door import BodyTooLarge, Gateway, GatewayDep, check_rate, read_json, scoped, trusts_identity
from troupe.integrations.replay import Replayed, replay_guard
from troupe.integrations.tickets import TicketBook

if TYPE_CHECKING:
    from elevenlabs.webhooks_custom import WebhooksClient

log = logging.getLogger(__name__)
router = APIRouter()

SOURCE = "elevenlabs"
DEFAULT_VOICE_ID = "21m00Tcm4TlvDq8ikWAM"  # ElevenLabs' premade "Rachel", for a persona without a voice_id
SPEECH_FORMAT = "mp3_44100_128"
# ElevenLabs' fields that may say who is calling: a custom LLM's `elevenlabs_extra_body` (what the
# conversation started with) and a conversation's dynamic variables (system__caller_id on phone calls)
PHONE_FIELDS = ("system__caller_id", "caller_phone", "phone", "phone_number")
USER_FIELDS = ("user_id", "caller_id")
CONVERSATION_FIELDS = ("conversation_id", "system__conversation_id")
# what a bridged client may send on to the agent; troupe itself starts the conversation and answers pings
CLIENT_MESSAGES = {"user_message", "user_activity", "contextual_update", "client_tool_result", "feedback"}
PASSED_CLOSE_CODES = {1000, 1001, 1008, 1011, 1013}

_background: set[asyncio.Task[Any]] = set()


class BadSignature(TroupeError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_signature"


class ElevenLabsFailed(TroupeError):
    status = 502
    type = "server_error"
    code = "upstream_error"


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _values(sources: Iterable[Mapping[str, Any]], names: Iterable[str]) -> list[str]:
    return [text for source in sources for name in names if (text := _text(source.get(name)))]


def caller_from(
    sources: Iterable[Mapping[str, Any]],
    *,
    conversation_id: str | None = None,
    known_calls: CallLookup | None,
    region: str = "US",
) -> str:
    """The caller in ElevenLabs' fields: a phone number first, then a user id, then the conversation."""
    sources = list(sources)
    phone = next((p for p in _values(sources, PHONE_FIELDS) if normalise_phone(p, region)), None)
    users = _values(sources, USER_FIELDS)
    conversation = conversation_id or next(iter(_values(sources, CONVERSATION_FIELDS)), None)
    return resolve_caller_id(
        phone=phone,
        call_id=None if users else conversation,
        user=users[0] if users else None,
        known_calls=known_calls,
        region=region,
    )


# ---------------------------------------------------------------------------------------- custom LLM


def _extra_body(body: ChatCompletionRequest) -> dict[str, Any]:
    extra = (body.model_extra or {}).get("elevenlabs_extra_body")
    return extra if isinstance(extra, dict) else {}


def _llm_persona(gateway: Gateway, body: ChatCompletionRequest, extra: Mapping[str, Any]) -> str:
    named = _text(extra.get("persona"))
    if named is None:
        return resolve_persona(gateway, body.model)
    found = gateway.catalog.find(named)
    if found is None:
        raise PersonaNotFound(
            f"Unknown persona {named!r}. Known: {', '.join(gateway.catalog.names())}",
            param="elevenlabs_extra_body.persona",
        )
    return str(found.name)


async def _speakable_events(first: TurnEvent, events: AsyncIterator[TurnEvent]) -> AsyncIterator[TurnEvent]:
    """The turn's text deltas re-cut into speakable pieces; its closing events (tool calls, done, an
    error) follow the last piece."""
    closing: list[TurnEvent] = []

    async def texts() -> AsyncIterator[str]:
        event: TurnEvent | None = first
        while event is not None:
            if isinstance(event, Delta):
                yield event.text
            else:
                closing.append(event)
            event = await anext(events, None)

    async for piece in speakable(texts()):
        yield Delta(text=piece)
    for event in closing:
        yield event


@router.post("/v1/elevenlabs-llm", openapi_extra=REQUEST_BODY)
@router.post("/v1/elevenlabs-llm/chat/completions", openapi_extra=REQUEST_BODY)
async def elevenlabs_llm(request: Request, gateway: GatewayDep) -> Any:
    """ElevenLabs' custom LLM: OpenAI chat completions plus `user_id` and `elevenlabs_extra_body`."""
    settings: Settings = gateway.settings
    body = parse_request(await read_json(request, settings.max_body_bytes))
    extra = _extra_body(body)
    persona = _llm_persona(gateway, body, extra)
    top = {"user_id": (body.model_extra or {}).get("user_id"), "caller_id": body.user}
    known_calls = gateway.known_calls if trusts_identity(request) else None  # a client key's callers are its own
    caller_id = scoped(request, caller_from((extra, top), known_calls=known_calls, region=settings.default_region))
    turn = turn_of(body, caller_id, persona, settings.max_message_chars)
    check_rate(request, turn.caller_id)
    model_name = body.model or persona.lower()
    events = observed(gateway.client.turn(turn), persona, time.perf_counter(), "elevenlabs").__aiter__()
    first = await anext(events)
    if isinstance(first, Failed):
        return error_response(first)
    if not body.stream:
        return await collect(first, events, model_name)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    # an empty first delta: the role chunk goes out at once, before the first piece is ready
    return StreamingResponse(
        sse(Delta(text=""), _speakable_events(first, events), ChunkWriter(model_name), include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------------------------------- post-call webhook


@functools.cache
def _webhook_helper() -> WebhooksClient:
    """The SDK's webhook helper. It never calls ElevenLabs, so one keyless client serves every request."""
    from elevenlabs.client import ElevenLabs

    return ElevenLabs(api_key="").webhooks


def _signed_parts(header: str) -> tuple[str, str]:
    """(t, v0) of `ElevenLabs-Signature: t=<unix>,v0=<hex>`, read as the SDK reads them (the last v0 counts)."""
    stamp = signature = ""
    for part in header.split(","):
        if part.startswith("t="):
            stamp = part[2:]
        elif part.startswith("v0="):
            signature = part
    return stamp, signature


def verified_event(header: str, body: bytes, secret: str, tolerance_s: float, now: float) -> tuple[Any, str]:
    """The webhook's event, once the SDK's helper has matched its signature, and that signature (what a
    replay repeats). The SDK allows a timestamp 30 minutes old and any in the future: troupe's tolerance
    applies first, both ways."""
    stamp, signature = _signed_parts(header)
    if not stamp.isdigit() or not signature:
        raise BadSignature("Missing or malformed ElevenLabs-Signature header (expected t=<unix>,v0=<hex>).")
    if abs(now - int(stamp)) > tolerance_s:
        raise BadSignature("The ElevenLabs-Signature timestamp is outside the accepted window.")
    from elevenlabs.errors import BadRequestError

    try:
        event = _webhook_helper().construct_event(rawBody=body.decode(), sig_header=header, secret=secret)
    except (BadRequestError, UnicodeDecodeError):
        raise BadSignature("The ElevenLabs-Signature does not match the body.") from None
    except json.JSONDecodeError as exc:  # signed, but not JSON
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    return event, signature


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def webhook_persona(gateway: Gateway, data: Mapping[str, Any]) -> str:
    """The persona a conversation was with: named in its variables or extra body, or the persona whose
    ELEVENLABS_AGENT_ID_<PERSONA> is the agent, else the default persona."""
    client_data = _dict(data.get("conversation_initiation_client_data"))
    for source in (_dict(client_data.get("dynamic_variables")), _dict(client_data.get("custom_llm_extra_body"))):
        if (name := _text(source.get("persona"))) and (found := gateway.catalog.find(name)) is not None:
            return str(found.name)
    agent_id = _text(data.get("agent_id"))
    if agent_id:
        for persona in gateway.catalog:
            if platform_secret("ELEVENLABS_AGENT_ID", persona.name) == agent_id:
                return str(persona.name)
    return str(gateway.catalog.get(gateway.settings.default_persona).name)


def webhook_caller(gateway: Gateway, data: Mapping[str, Any]) -> str:
    client_data = _dict(data.get("conversation_initiation_client_data"))
    phone_call = _dict(_dict(data.get("metadata")).get("phone_call"))
    sources = (
        _dict(client_data.get("dynamic_variables")),
        {"phone": phone_call.get("external_number")},
        _dict(client_data.get("custom_llm_extra_body")),
        {"user_id": data.get("user_id") or client_data.get("user_id")},
    )
    return caller_from(
        sources,
        conversation_id=_text(data.get("conversation_id")),
        known_calls=gateway.known_calls,
        region=gateway.settings.default_region,
    )


def transcript_text(data: Mapping[str, Any]) -> str:
    lines = []
    for turn in data.get("transcript") or ():
        if isinstance(turn, dict) and (said := _text(turn.get("message"))):
            lines.append(f"{'Caller' if turn.get('role') == 'user' else 'You'}: {said}")
    return "\n".join(lines)


async def _remember(gateway: Gateway, persona: str, caller: str, transcript: str, conversation: str) -> None:
    gateway.client.forget(caller, persona)  # the next conversation starts from the store, memories and all
    try:
        await gateway.orchestrator.remember_call.remote(persona, caller, transcript, SOURCE)
    except Exception:
        log.warning("the ElevenLabs conversation %s could not be kept", conversation, exc_info=True)


WEBHOOK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {"type": "string", "example": "post_call_transcription"},
                        "event_timestamp": {"type": "integer"},
                        "data": {"type": "object"},
                    },
                }
            }
        },
    },
    "parameters": [{"name": "ElevenLabs-Signature", "in": "header", "required": True, "schema": {"type": "string"}}],
}


@router.post("/elevenlabs/webhook", openapi_extra=WEBHOOK_BODY)
async def elevenlabs_webhook(request: Request, gateway: GatewayDep) -> Any:
    """ElevenLabs' post-call webhook. A transcription goes into the persona's memory of the caller, once
    per conversation however often it is delivered; other event types are acknowledged and ignored."""
    settings: Settings = gateway.settings
    if settings.elevenlabs_webhook_secret is None:
        raise NotConfigured(
            "ElevenLabs webhooks are not enabled: set ELEVENLABS_WEBHOOK_SECRET to the webhook's secret."
        )
    raw = await request.body()
    if len(raw) > settings.max_body_bytes:
        raise BodyTooLarge(f"Request body is {len(raw)} bytes; the limit is {settings.max_body_bytes}.")
    secret = settings.elevenlabs_webhook_secret.get_secret_value()
    header = request.headers.get("elevenlabs-signature", "")
    event, signature = verified_event(header, raw, secret, settings.webhook_tolerance_s, time.time())
    if not await replay_guard(request.app.state).first_delivery(SOURCE, signature):
        raise Replayed("This signed ElevenLabs delivery was received before; a replay is not processed.")
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise InvalidRequest("The body must be a JSON object with a `type`.", param="type")
    kind = event["type"]
    if kind != "post_call_transcription":
        return {"status": "ignored", "type": kind}
    data = event.get("data")
    if not isinstance(data, dict):
        raise InvalidRequest("A post_call_transcription needs a `data` object.", param="data")
    conversation = _text(data.get("conversation_id")) or hashlib.sha256(raw).hexdigest()
    store = await gateway.store()
    if not await store.claim_event(SOURCE, f"{kind}:{conversation}"):
        return {"status": "duplicate", "type": kind}
    persona, caller = webhook_persona(gateway, data), webhook_caller(gateway, data)
    log.info("elevenlabs %s: conversation %s with %s", kind, conversation, persona)
    # the platform wants a quick answer; the summary (a model call) finishes on its own
    task = asyncio.ensure_future(_remember(gateway, persona, caller, transcript_text(data), conversation))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return {"status": "accepted", "type": kind}


# ---------------------------------------------------------------------------------------- voice bridge


def origin_allowed(origin: str | None, host: str | None, allowed: str) -> bool:
    """A browser's Origin: one of the comma-separated allowed origins ("*": any), or the door's own page
    (the Origin names the Host it connected to). No Origin: not a browser."""
    if not origin:
        return True
    origin = origin.strip().rstrip("/").lower()
    origins = {o.strip().rstrip("/").lower() for o in allowed.split(",") if o.strip()}
    if "*" in origins or origin in origins:
        return True
    _, _, authority = origin.partition("://")
    return host is not None and authority == host.strip().lower()


def admitted(websocket: WebSocket, tickets: TicketBook, insecure: bool) -> str | None:
    """Who opens the bridge: a ticket's subject (`?ticket=`, redeemed once), else the key the door matched
    to an Authorization: Bearer header (a client that is not a browser); anyone at an --insecure door."""
    ticket = websocket.query_params.get("ticket")
    if ticket:
        return tickets.redeem(ticket)
    key = getattr(websocket.state, "principal", None)  # what the door's access layer made of the request
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if key is not None and (insecure or (scheme.lower() == "bearer" and token.strip())):
        return str(key.name)
    return None


async def signed_url(settings: Settings, agent_id: str) -> str:
    """A signed conversation URL for an agent, from ElevenLabs (the API key never reaches the client)."""
    from elevenlabs.client import AsyncElevenLabs

    assert settings.elevenlabs_api_key is not None
    async with httpx.AsyncClient(timeout=10) as http:
        client = AsyncElevenLabs(
            api_key=settings.elevenlabs_api_key.get_secret_value(),
            base_url=settings.elevenlabs_base_url,
            httpx_client=http,
        )
        response = await client.conversational_ai.conversations.get_signed_url(agent_id=agent_id)
    return str(response.signed_url)


def initiation(persona: str, user_id: str) -> dict[str, Any]:
    """How troupe starts a conversation: who it is with, for the custom LLM and the post-call webhook."""
    identity = {"persona": persona, "user_id": user_id}
    return {
        "type": "conversation_initiation_client_data",
        "dynamic_variables": identity,
        "custom_llm_extra_body": identity,
        "user_id": user_id,
    }


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the client may be gone already
        await websocket.close(code=code, reason=reason.encode()[:123].decode(errors="ignore"))


@router.websocket("/ws/elevenlabs")
async def voice_bridge(websocket: WebSocket, gateway: GatewayDep) -> None:
    """A client talks to a persona by voice: troupe opens the persona's ElevenLabs agent conversation
    and relays it both ways (the client sends `user_audio_chunk` messages or raw audio frames)."""
    settings: Settings = gateway.settings
    # both refusals come before accepting: the handshake is refused (403)
    if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"), settings.cors_origins):
        await websocket.close(code=1008)
        return
    subject = admitted(websocket, gateway.tickets, settings.insecure)
    if subject is None:
        await websocket.close(code=1008)
        return
    await websocket.accept()
    name = websocket.query_params.get("persona") or settings.default_persona
    persona = gateway.catalog.find(name)
    if persona is None:
        await _close(websocket, 1008, f"Unknown persona {name!r}.")
        return
    if settings.elevenlabs_api_key is None:
        await _close(websocket, 1011, "ElevenLabs is not configured on this server (ELEVENLABS_API_KEY).")
        return
    agent_id = platform_secret("ELEVENLABS_AGENT_ID", persona.name)
    if not agent_id:
        await _close(
            websocket, 1011, f"{persona.name} has no ElevenLabs agent (ELEVENLABS_AGENT_ID_{persona.key.upper()})."
        )
        return
    # one id for the whole conversation, so every custom-LLM turn reaches the same session
    user_id = _text(websocket.query_params.get("user_id")) or f"voice-{secrets.token_hex(6)}"
    log.info("voice bridge to %s for %s (%s)", persona.name, subject, user_id)
    try:
        url = await signed_url(settings, agent_id)
    except Exception as exc:
        log.warning("ElevenLabs signed URL for %s failed: %s", persona.name, type(exc).__name__)
        await _close(websocket, 1011, "Could not start an ElevenLabs conversation.")
        return
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    try:
        async with connect(url, open_timeout=10, max_size=16 * 1024 * 1024) as upstream:
            await upstream.send(json.dumps(initiation(persona.name, user_id)))
            await _relay(websocket, upstream)
    except (OSError, TimeoutError, WebSocketException) as exc:
        log.warning("ElevenLabs conversation for %s failed: %s", persona.name, type(exc).__name__)
        await _close(websocket, 1011, "ElevenLabs refused the conversation.")


def _client_message(message: Mapping[str, Any]) -> str | None:
    """What a client frame becomes upstream, or None to drop it."""
    if message.get("bytes") is not None:
        return json.dumps({"user_audio_chunk": base64.b64encode(message["bytes"]).decode()})
    text = message.get("text")
    try:
        payload = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    if isinstance(payload, dict) and ("user_audio_chunk" in payload or payload.get("type") in CLIENT_MESSAGES):
        return str(text)
    return None


async def _relay(client: WebSocket, upstream: Any) -> None:
    """Both directions until either side ends; then the other side is closed with a fitting code."""
    from websockets.exceptions import ConnectionClosed

    async def from_client() -> int:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1000)
            if (forward := _client_message(message)) is not None:
                await upstream.send(forward)

    async def from_upstream() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in upstream:
                text = raw if isinstance(raw, str) else raw.decode(errors="replace")
                try:
                    event = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict) and event.get("type") == "ping":
                    ping = _dict(event.get("ping_event"))
                    # ElevenLabs may already be closing: what it said before that still reaches the caller
                    with contextlib.suppress(ConnectionClosed):
                        await upstream.send(json.dumps({"type": "pong", "event_id": ping.get("event_id")}))
                    continue
                await client.send_text(text)

    inbound = asyncio.ensure_future(from_client())
    outbound = asyncio.ensure_future(from_upstream())
    try:
        done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        if inbound in done and isinstance(inbound.exception(), ConnectionClosed):
            # ElevenLabs closed while the caller spoke: relay what it sent before closing, then end
            done, _ = await asyncio.wait({outbound}, timeout=5)
    finally:
        for task in (inbound, outbound):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    client_left = inbound in done and inbound.exception() is None
    # a failed write to the client means it is gone too
    client_left = client_left or (outbound in done and outbound.exception() is not None)
    if client_left:
        code = inbound.result() if inbound in done and inbound.exception() is None else 1001
        await upstream.close(code=code if code in (1000, 1001) else 1000, reason="the caller hung up")
        return
    # ElevenLabs ended the conversation (or could no longer be written to): tell the client why
    code, reason = upstream.close_code, upstream.close_reason or "The conversation ended."
    if code not in PASSED_CLOSE_CODES and not (code and 3000 <= code <= 4999):
        code, reason = 1011, "Lost the connection to ElevenLabs."
    await upstream.close()
    await _close(client, code, reason)


# ---------------------------------------------------------------------------------------- speech


async def speak(settings: Settings, persona: Any, text: str) -> bytes:
    """`text` in the persona's voice, as MP3 bytes, from ElevenLabs' text to speech."""
    from elevenlabs.client import AsyncElevenLabs
    from elevenlabs.core.api_error import ApiError

    if settings.elevenlabs_api_key is None:
        raise NotConfigured("ElevenLabs is not configured: set ELEVENLABS_API_KEY.")
    if not text.strip():
        raise InvalidRequest("There is nothing to say.", param="text")
    voice_id = getattr(persona, "voice_id", None) or DEFAULT_VOICE_ID
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            client = AsyncElevenLabs(
                api_key=settings.elevenlabs_api_key.get_secret_value(),
                base_url=settings.elevenlabs_base_url,
                httpx_client=http,
            )
            chunks = [
                chunk async for chunk in client.text_to_speech.convert(voice_id, text=text, output_format=SPEECH_FORMAT)
            ]
    except ApiError as exc:
        raise ElevenLabsFailed(f"ElevenLabs refused the speech request (HTTP {exc.status_code}).") from None
    except httpx.HTTPError as exc:
        raise ElevenLabsFailed(
            f"Cannot reach ElevenLabs at {settings.elevenlabs_base_url}: {type(exc).__name__}."
        ) from None
    return b"".join(chunks)

"""VAPI, spoken as VAPI speaks: its custom-LLM requests arrive at `/chat/completions` (see
`completions.py`, which reads the identity fields below), and its server messages at `POST /vapi/events`
(`{"message": {"type": ...}}`): call status, transcripts, the end-of-call report (summarised into the
persona's memory of the caller), tool calls (run with the persona's own tools) and assistant requests
(answered with an assistant that points VAPI back at troupe). The older event names of the contract
(`call.started`, `call.ended`, `speech.recognized`, `assistant.message`) are accepted too.

Server messages carry VAPI_SECRET as is (X-Vapi-Secret, or Authorization: Bearer), or are signed with it by
a VAPI HMAC credential (SHA-256, hex, payload "{timestamp}.{body}"): a signed message is accepted once,
while its timestamp is within TROUPE_WEBHOOK_TOLERANCE_S."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request

from troupe.config.settings import Settings
from troupe.core.caller import normalise_phone, resolve_caller_id
from troupe.core.chat import ToolCall
from troupe.core.errors import InvalidRequest, NotConfigured, TroupeError
from troupe.integrations.door import Gateway, GatewayDep, read_json
from troupe.integrations.replay import Replayed, replay_guard

log = logging.getLogger(__name__)
router = APIRouter()

SOURCE = "vapi"
# the headers an HMAC credential sends, as named when it is set up: VAPI's defaults are x-signature and
# x-timestamp; set-ups commonly name them x-vapi-signature and x-vapi-timestamp
SIGNATURE_HEADERS = ("x-vapi-signature", "x-signature")
TIMESTAMP_HEADERS = ("x-vapi-timestamp", "x-timestamp")
SIGNATURE_PREFIX = "sha256="  # the credential's optional signaturePrefix, GitHub style
MILLISECONDS_AFTER = 10**11  # a timestamp this large is in milliseconds (10**11 seconds is the year 5138)

_background: set[asyncio.Task[Any]] = set()


class BadSecret(TroupeError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_secret"


class BadSignature(TroupeError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_signature"


def _dig(data: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def call_identity(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(caller phone, call id) from VAPI's fields: `call.customer.number`, `customer.number`, `call.id`."""
    phone = _dig(body, "call", "customer", "number") or _dig(body, "customer", "number")
    if not phone and isinstance(body.get("call"), dict):
        phone = body["call"].get("from")  # the contract's older call object
    call_id = _dig(body, "call", "id")
    return (str(phone) if phone else None), (str(call_id) if call_id else None)


def assistant_persona(settings: Settings, catalog: Any, body: dict[str, Any]) -> str | None:
    """The persona VAPI's assistant stands for: its metadata or variable values name one, or the
    assistant id is mapped in TROUPE_VAPI_ASSISTANTS ("asst-id=Maya,...")."""
    for path in (
        ("metadata", "persona"),
        ("call", "metadata", "persona"),
        ("assistant", "metadata", "persona"),
        ("call", "assistantOverrides", "variableValues", "persona"),
        ("assistant", "model", "model"),
    ):
        name = _dig(body, *path)
        if isinstance(name, str) and (found := catalog.find(name)) is not None:
            return str(found.name)
    assistant_id = _dig(body, "call", "assistantId") or _dig(body, "assistant", "id")
    if assistant_id:
        for pair in settings.vapi_assistants.split(","):
            key, _, persona = pair.partition("=")
            if key.strip() == assistant_id and (found := catalog.find(persona)) is not None:
                return str(found.name)
    return None


def hmac_signature(secret: str, timestamp: str, body: bytes) -> str:
    """What a VAPI HMAC credential sends: hex HMAC-SHA256 of "{timestamp}.{body}" (its default payload)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sent_at(timestamp: str) -> float | None:
    """The Unix time of a signed timestamp, in seconds or milliseconds (VAPI's docs do not say which)."""
    if not timestamp.isdigit():
        return None
    value = int(timestamp)
    return value / 1000 if value >= MILLISECONDS_AFTER else float(value)


def verify_hmac(secret: str, body: bytes, timestamp: str | None, signature: str | None, *,
                now: float, tolerance_s: float) -> str:  # fmt: skip
    """The verified signature (what a replay repeats), or BadSignature saying what was wrong."""
    if not timestamp or not signature:
        raise BadSignature(f"A signed VAPI message needs both {SIGNATURE_HEADERS[0]} and {TIMESTAMP_HEADERS[0]}.")
    when = sent_at(timestamp.strip())
    if when is None:
        raise BadSignature("The VAPI timestamp is not a Unix time.")
    expected = hmac_signature(secret, timestamp.strip(), body)
    given = signature.strip().lower().removeprefix(SIGNATURE_PREFIX)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise BadSignature("The VAPI signature does not match the body (check the HMAC credential's secret).")
    if abs(now - when) > tolerance_s:
        raise BadSignature("The VAPI timestamp is outside the accepted window (a delayed or replayed message).")
    return expected


def _header(request: Request, names: tuple[str, ...]) -> str | None:
    return next((value for name in names if (value := request.headers.get(name))), None)


async def _authenticate(request: Request, settings: Settings, body: bytes) -> None:
    """An HMAC-signed message (refused if replayed), else the shared secret as is."""
    if settings.vapi_secret is None:
        raise NotConfigured("VAPI events are not enabled: set VAPI_SECRET to the secret configured in VAPI.")
    secret = settings.vapi_secret.get_secret_value()
    signature = _header(request, SIGNATURE_HEADERS)
    if signature is not None:
        verified = verify_hmac(secret, body, _header(request, TIMESTAMP_HEADERS), signature,
                               now=time.time(), tolerance_s=settings.webhook_tolerance_s)  # fmt: skip
        if not await replay_guard(request.app.state).first_delivery(SOURCE, verified):
            raise Replayed("This signed VAPI message was received before; a replay is not processed.")
        return
    given = request.headers.get("x-vapi-secret", "")
    if not given:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise BadSecret("Missing or wrong VAPI secret (X-Vapi-Secret, Authorization: Bearer, or an HMAC signature).")


def _transcript(message: dict[str, Any]) -> str:
    text = _dig(message, "artifact", "transcript") or message.get("transcript")
    if isinstance(text, str) and text.strip():
        return text
    lines = []
    for item in _dig(message, "artifact", "messages") or message.get("messages") or []:
        if isinstance(item, dict) and item.get("role") in ("user", "bot", "assistant") and item.get("message"):
            lines.append(f"{'Caller' if item['role'] == 'user' else 'You'}: {item['message']}")
    return "\n".join(lines)


def _later(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


@router.post("/vapi/events")
async def vapi_events(request: Request, gateway: GatewayDep) -> Any:
    settings: Settings = gateway.settings
    await _authenticate(request, settings, await request.body())
    body = await read_json(request, settings.max_body_bytes)  # parsed only once it is authenticated
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object with a `message`.")
    inner = body.get("message")
    message: dict[str, Any] = inner if isinstance(inner, dict) else body
    kind = message.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest("message.type is missing.", param="message.type")
    phone, call_id = call_identity(message)
    region = settings.default_region
    if call_id and not phone:
        await gateway.known_calls.load(resolve_caller_id(call_id=call_id))
    caller = resolve_caller_id(phone=phone, call_id=call_id, known_calls=gateway.known_calls, region=region) if (
        phone or call_id
    ) else None  # fmt: skip
    if call_id and phone and (number := normalise_phone(phone, region)):
        # later custom-LLM requests that carry only the call id reach the same caller
        gateway.known_calls[resolve_caller_id(call_id=call_id)] = number
    default = gateway.catalog.get(settings.default_persona).name
    persona = assistant_persona(settings, gateway.catalog, message) or default
    log.info("vapi %s (call %s, %s)", kind, call_id, persona)

    if kind == "assistant-request":
        return {"assistant": _assistant(request, settings, gateway.catalog.get(persona))}
    if kind == "tool-calls":
        return {"results": await _run_tools(gateway, persona, caller or "vapi", message)}
    if kind in ("end-of-call-report", "call.ended"):
        if caller:
            gateway.client.forget(caller, persona)  # the next call starts from the store, memories and all
            _later(_remember(gateway, persona, caller, call_id, _transcript(message)))
        return {"received": kind}
    if kind == "status-update" and message.get("status") == "ended" and caller:
        return {"received": kind}  # the end-of-call report that follows carries the transcript
    if kind == "hang":
        log.warning("VAPI reports the assistant went silent on call %s (%s)", call_id, persona)
        return {"received": kind}
    if kind in ("status-update", "transcript", "conversation-update", "call.started", "speech.recognized",
                "assistant.message", "speech-update", "user-interrupted"):  # fmt: skip
        return {"received": kind}
    return {"ignored": kind}


def _assistant(request: Request, settings: Settings, persona: Any) -> dict[str, Any]:
    """An assistant whose model is troupe's own custom LLM (VAPI appends /chat/completions to `url`)."""
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    assistant: dict[str, Any] = {
        "name": f"{persona.name} (troupe)",
        "firstMessage": f"Hi, this is {persona.name}. How can I help?",
        "model": {"provider": "custom-llm", "url": base, "model": persona.key},
        "metadata": {"persona": persona.name},
    }
    if getattr(persona, "voice_id", None):
        assistant["voice"] = {"provider": "11labs", "voiceId": persona.voice_id}
    return assistant


async def _run_tools(gateway: Gateway, persona: str, caller: str, message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("toolCallList")
    if not isinstance(calls, list):
        calls = [item.get("toolCall") for item in message.get("toolWithToolCallList") or [] if isinstance(item, dict)]
    results = []
    for raw in calls:
        if not isinstance(raw, dict):
            continue
        call_id = str(raw.get("id", ""))
        nested = raw.get("function")
        function: dict[str, Any] = nested if isinstance(nested, dict) else raw
        name = str(function.get("name", ""))
        arguments = function.get("arguments", function.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments or {})
        try:
            result = await gateway.orchestrator.run_persona_tool.remote(
                persona, caller, ToolCall(id=call_id, name=name, arguments=arguments)
            )
            results.append({"toolCallId": call_id, "result": result})
        except Exception as exc:  # one failed tool must not cost the others their answers
            cause = getattr(exc, "cause", exc)
            text = getattr(cause, "message", None) or "the tool failed"
            log.warning("vapi tool %s for %s failed: %s", name, persona, text)
            results.append({"toolCallId": call_id, "error": text})
    return results


async def _remember(gateway: Gateway, persona: str, caller: str, call_id: str | None, transcript: str) -> None:
    """Once per call (VAPI may send the report twice), even across restarts."""
    try:
        if call_id:
            store = await _store(gateway)
            if not await store.claim_event("vapi", f"end-of-call:{call_id}"):
                return
        await gateway.orchestrator.remember_call.remote(persona, caller, transcript, "vapi")
    except Exception:
        log.warning("the end-of-call report of %s could not be kept", call_id, exc_info=True)


async def _store(gateway: Gateway) -> Any:
    return await gateway.store()

"""The OpenAI-compatible completions door that voice platforms call: `/chat/completions` and
`/v1/chat/completions` (streaming and not), and `/v1/models`, which lists the personas."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from troupe.actors.caller import is_anonymous, normalise_phone, resolve_caller_id
from troupe.actors.messages import TurnEvent, TurnRequest
from troupe.chat_model import ToolCall, Usage
from troupe.config.keys import ApiKey
from troupe.control_panel.metrics import COST, MODEL_ERRORS, TOKENS, TTFT
from troupe.control_panel.request_ids import MARK
from troupe.errors import InvalidRequest, PersonaNotFound, TroupeError
from troupe.integrations.openai_api import ChatCompletionRequest, ChunkWriter, completion_json, error_json
from troupe.integrations.vapi import assistant_persona, call_identity

router = APIRouter()

SERVE_GENERATED_MARK = MARK.decode()  # an X-Request-ID that Ray Serve made up, not the client's

# model names that mean "whoever answers by default" rather than a persona
GENERIC_MODELS = {"", "default", "troupe", "persona", "assistant", "custom-llm", "custom_llm"}
GENERIC_PREFIXES = ("gpt-", "gpt4", "o1", "o3", "o4", "claude", "gemini", "llama", "mistral", "gemma", "chatgpt")


def resolve_persona(gateway: Any, model: str) -> str:
    name = model.strip()
    found = gateway.catalog.find(name)
    if found is not None:
        return found.name
    lowered = name.lower()
    if lowered in GENERIC_MODELS or lowered.startswith(GENERIC_PREFIXES):
        return gateway.catalog.get(gateway.settings.default_persona).name
    raise PersonaNotFound(f"Unknown persona {model!r}. Known: {', '.join(gateway.catalog.names())}", param="model")


async def read_json(request: Request, limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise BodyTooLarge(f"Request body is {len(body)} bytes; the limit is {limit}.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None


class BodyTooLarge(TroupeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


def parse_request(body: Any) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"Invalid request: {param}: {first['msg']}", param=param) from None


async def caller_of(request: Request, body: ChatCompletionRequest, known_calls: Any, region: str = "US") -> str:
    """Who is calling: VAPI's headers, else VAPI's body fields (`call.customer.number`, `call.id`), else
    the request id or the body's `user`, else anonymous. A call id seen with a number maps to it.

    Identity is taken as given only from a key that may assert it (a platform's or an admin's). A
    client key's callers are its own: what it asserts is scoped to the key, so a client saying
    +14155550100 never reaches the platform caller +14155550100, nor another client's."""
    headers = request.headers
    extra = body.model_extra or {}
    phone, call_id = call_identity(extra)
    phone = headers.get("x-vapi-caller-phone") or phone
    call_id = headers.get("x-vapi-call-id") or call_id
    trusted = trusts_identity(request)
    if trusted and phone and call_id and (number := normalise_phone(phone, region)):
        known_calls.setdefault(resolve_caller_id(call_id=call_id), number)
    elif trusted and call_id and not phone:
        await known_calls.load(resolve_caller_id(call_id=call_id))  # another replica may have seen its number
    # Ray Serve writes an X-Request-ID into every request that has none: that one names no caller
    request_id = None if headers.get(SERVE_GENERATED_MARK) else headers.get("x-request-id")
    caller = resolve_caller_id(
        phone=phone,
        call_id=call_id,
        request_id=request_id,
        user=body.user,
        known_calls=known_calls if trusted else None,
        region=region,
    )
    return scoped(request, caller)


def principal(request: Request) -> ApiKey | None:
    """The key the access layer let this request in with (None: a route it does not guard)."""
    return getattr(request.state, "principal", None)


def trusts_identity(request: Request) -> bool:
    """The caller identity this request asserts is taken as given (a platform's or an admin's key)."""
    key = principal(request)
    return key is None or key.asserts_identity


def scoped(request: Request, caller: str) -> str:
    """The caller id as the request's key owns it: a client key's asserted caller is that key's own
    (`key:<name>:<caller>`); a trusted key's, and an anonymous one, stay as they are."""
    key = principal(request)
    if key is None or key.asserts_identity or is_anonymous(caller):
        return caller
    return f"key:{key.name}:{caller}"


def check_rate(request: Request, caller_id: str) -> None:
    """Charge a turn to its key, its client address and its caller (429 when any of them is spent)."""
    key = principal(request)
    address = request.client.host if request.client else None
    request.app.state.gateway.limiter.check(caller_id, key=key.name if key else None, address=address)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's schema with its $defs inlined, so it can sit inside an OpenAPI operation."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return walk(dict(defs[node["$ref"].split("/")[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


# The body is parsed by hand (for exact OpenAI-style errors), so its schema is declared here for the spec.
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_refs(ChatCompletionRequest.model_json_schema())}},
    }
}


def turn_of(body: ChatCompletionRequest, caller_id: str, persona: str, max_chars: int) -> TurnRequest:
    """The turn a completions request asks for; a message longer than `max_chars` is refused (400)."""
    turn = TurnRequest(
        caller_id=caller_id,
        persona=persona,
        messages=tuple(m.to_chat() for m in body.messages),
        temperature=body.temperature,
        max_tokens=body.token_limit(),
        stop=body.stops(),
        client_tools=body.client_tools(),
    )
    for message in turn.messages:
        if message.content and len(message.content) > max_chars:
            raise InvalidRequest(
                f"A message is {len(message.content)} characters; the limit is {max_chars}.", param="messages"
            )
    return turn


@router.post("/chat/completions", openapi_extra=REQUEST_BODY)
@router.post("/v1/chat/completions", openapi_extra=REQUEST_BODY)
async def chat_completions(request: Request) -> Any:
    gateway = request.app.state.gateway
    body = parse_request(await read_json(request, gateway.settings.max_body_bytes))
    persona = resolve_persona(gateway, body.model)
    if not gateway.catalog.find(body.model.strip()):
        # a generic model name: VAPI's assistant may say which persona it stands for
        persona = assistant_persona(gateway.settings, gateway.catalog, body.model_extra or {}) or persona
    caller = await caller_of(request, body, gateway.known_calls, gateway.settings.default_region)
    turn = turn_of(body, caller, persona, gateway.settings.max_message_chars)
    check_rate(request, turn.caller_id)
    model_name = body.model or persona.lower()
    began = time.perf_counter()
    events = _observed(gateway.client.turn(turn), persona, began, "completions").__aiter__()
    first = await anext(events)
    if first.kind == "error":
        return _error_response(first)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(first, events, ChunkWriter(model_name), include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _collect(first, events, model_name)


async def _observed(
    events: AsyncIterator[TurnEvent], persona: str, began: float, door: str
) -> AsyncIterator[TurnEvent]:
    """Records time to first token (by persona and door), tokens, cost and failures by persona as the
    events pass."""
    first = True
    async for event in events:
        if first and event.kind in ("delta", "tool_calls", "done"):
            TTFT.labels(persona, door).observe(time.perf_counter() - began)
            first = False
        if event.kind == "done" and event.usage:
            TOKENS.labels(persona, "input").inc(event.usage.input_tokens)
            TOKENS.labels(persona, "output").inc(event.usage.output_tokens)
            COST.labels(persona).inc(event.cost_usd)
        elif event.kind == "error":
            MODEL_ERRORS.labels(persona, event.error_code or "internal_error").inc()
        yield event


def _error_response(event: TurnEvent) -> JSONResponse:
    status = event.error_status or 500
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    if event.error_code == "budget_exceeded":
        kind = "insufficient_quota"
    headers = {"Retry-After": "60" if status == 429 else "5"} if status in (429, 503) else None
    return JSONResponse(error_json(event.text, kind, event.error_code), status_code=status, headers=headers)


async def _sse(
    first: TurnEvent, events: AsyncIterator[TurnEvent], writer: ChunkWriter, include_usage: bool
) -> AsyncIterator[bytes]:
    """The reply as SSE. What is ready together goes in one write: the role with the first words, and
    the finish with the usage and `[DONE]`."""
    out = writer.role()
    event: TurnEvent | None = first
    while event is not None:
        if event.kind == "delta" and event.text:
            out += writer.content(event.text)
        elif event.kind == "tool_calls":
            out += writer.tool_calls(event.tool_calls)
        elif event.kind == "done":
            out += writer.finish(event.finish_reason or "stop")
            if include_usage:
                out += writer.usage(event.usage or Usage())
        elif event.kind == "error":
            # headers are sent: report the error in-band and end the stream cleanly
            out += writer.error(event.text, "server_error", event.error_code or "internal_error")
        if out and event.kind not in ("done", "error"):  # after those, the stream only ends
            yield out
            out = b""
        event = await anext(events, None)
    yield out + writer.done()


async def _collect(first: TurnEvent, events: AsyncIterator[TurnEvent], model_name: str) -> Any:
    parts: list[str] = []
    calls: tuple[ToolCall, ...] = ()
    finish, usage = "stop", Usage()
    event: TurnEvent | None = first
    while event is not None:
        if event.kind == "delta":
            parts.append(event.text)
        elif event.kind == "tool_calls":
            calls = calls + event.tool_calls
        elif event.kind == "done":
            finish, usage = event.finish_reason or "stop", event.usage or Usage()
        elif event.kind == "error":
            return _error_response(event)
        event = await anext(events, None)
    return completion_json(model_name, "".join(parts), finish, usage, calls)


@router.get("/v1/models")
@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    gateway = request.app.state.gateway
    return {
        "object": "list",
        "data": [
            {"id": p.key, "object": "model", "created": 0, "owned_by": "troupe", "name": p.name, "role": p.role}
            for p in gateway.catalog
        ],
    }

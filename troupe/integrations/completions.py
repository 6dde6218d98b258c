"""The OpenAI-compatible completions door that voice platforms call: `/chat/completions` and
`/v1/chat/completions` (streaming and not), and `/v1/models`, which lists the personas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, assert_never

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError

from troupe.clients import tracing as exporting
from troupe.clients.openai_api import ChatCompletionRequest, ChunkWriter, completion_json, error_json
from troupe.control_panel.metrics import COST, MODEL_ERRORS, TOKENS, TTFT
from troupe.control_panel.request_ids import MARK
from troupe.core import tracing
from troupe.core.caller import normalise_phone, resolve_caller_id
from troupe.core.chat import ToolCall, Usage
from troupe.core.errors import InvalidRequest, PersonaNotFound, TroupeError
from troupe.core.messages import Delta, Done, Failed, ToolCalls, TurnEvent, TurnRequest
from troupe.integrations.door import Gateway, GatewayDep, check_rate, read_json, scoped, trusts_identity
from troupe.integrations.vapi import assistant_persona, call_identity

router = APIRouter()

SERVE_GENERATED_MARK = MARK.decode()  # an X-Request-ID that Ray Serve made up, not the client's

# model names that mean "whoever answers by default" rather than a persona
GENERIC_MODELS = {"", "default", "troupe", "persona", "assistant", "custom-llm", "custom_llm"}
GENERIC_PREFIXES = ("gpt-", "gpt4", "o1", "o3", "o4", "claude", "gemini", "llama", "mistral", "gemma", "chatgpt")


def resolve_persona(gateway: Gateway, model: str) -> str:
    name = model.strip()
    found = gateway.catalog.find(name)
    if found is not None:
        return found.name
    lowered = name.lower()
    if lowered in GENERIC_MODELS or lowered.startswith(GENERIC_PREFIXES):
        return gateway.catalog.get(gateway.settings.default_persona).name
    raise PersonaNotFound(f"Unknown persona {model!r}. Known: {', '.join(gateway.catalog.names())}", param="model")


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
async def chat_completions(request: Request, gateway: GatewayDep) -> Any:
    exporting.setup(gateway.settings, "door")  # once per process, when an endpoint is configured
    # a caller's own traceparent is continued; the span ends when the reply has been sent
    route = getattr(request.scope.get("route"), "path", request.url.path)
    span = tracing.start(f"POST {route}", parent=_headers(request), kind=SpanKind.SERVER)
    try:
        response = await _complete(request, gateway, span)
    except TroupeError as exc:  # the caller's error (or troupe's, 5xx), answered in OpenAI's shape
        _status(span, exc.status)
        span.end()
        raise
    except BaseException as exc:
        tracing.end(span, exc)
        raise
    if span.is_recording():
        span.set_attributes({"http.request.method": "POST", "http.route": route})
        if isinstance(response, StreamingResponse):
            response.body_iterator = _ending(span, response.body_iterator)
        else:
            _status(span, response.status_code if isinstance(response, JSONResponse) else 200)
            span.end()
    return response


def _headers(request: Request) -> tracing.Carrier | None:
    """The caller's W3C trace context, if it sent one."""
    if not tracing.active() or "traceparent" not in request.headers:
        return None
    return {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}


def _status(span: Span, code: int) -> None:
    span.set_attribute("http.response.status_code", code)
    if code >= 500:
        tracing.failed(span, str(code))


async def _ending(span: Span, body: AsyncIterable[Any]) -> AsyncIterator[Any]:
    try:
        async for part in body:
            yield part
        _status(span, 200)
    finally:
        span.end()


async def _complete(request: Request, gateway: GatewayDep, span: Span) -> Any:
    body = parse_request(await read_json(request, gateway.settings.max_body_bytes))
    persona = resolve_persona(gateway, body.model)
    if not gateway.catalog.find(body.model.strip()):
        # a generic model name: VAPI's assistant may say which persona it stands for
        persona = assistant_persona(gateway.settings, gateway.catalog, body.model_extra or {}) or persona
    caller = await caller_of(request, body, gateway.known_calls, gateway.settings.default_region)
    turn = turn_of(body, caller, persona, gateway.settings.max_message_chars)
    check_rate(request, turn.caller_id)
    if span.is_recording():
        span.set_attribute("troupe.persona", persona)
        turn = turn.model_copy(update={"trace": tracing.carrier(span)})
    model_name = body.model or persona.lower()
    began = time.perf_counter()
    events = observed(gateway.client.turn(turn), persona, began, "completions").__aiter__()
    first = await anext(events)
    if isinstance(first, Failed):
        return error_response(first)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse(first, events, ChunkWriter(model_name), include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await collect(first, events, model_name)


async def observed(events: AsyncIterator[TurnEvent], persona: str, began: float, door: str) -> AsyncIterator[TurnEvent]:
    """Records time to first token (by persona and door), tokens, cost and failures by persona as the
    events pass."""
    first = True
    async for event in events:
        if first and not isinstance(event, Failed):
            TTFT.labels(persona, door).observe(time.perf_counter() - began)
            first = False
        match event:
            case Done(usage=usage, cost_usd=cost):
                TOKENS.labels(persona, "input").inc(usage.input_tokens)
                TOKENS.labels(persona, "output").inc(usage.output_tokens)
                COST.labels(persona).inc(cost)
            case Failed(code=code):
                MODEL_ERRORS.labels(persona, code).inc()
        yield event


def error_response(failed: Failed) -> JSONResponse:
    status = failed.status
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    if failed.code == "budget_exceeded":
        kind = "insufficient_quota"
    headers = {"Retry-After": "60" if status == 429 else "5"} if status in (429, 503) else None
    return JSONResponse(error_json(failed.text, kind, failed.code), status_code=status, headers=headers)


async def sse(
    first: TurnEvent, events: AsyncIterator[TurnEvent], writer: ChunkWriter, include_usage: bool
) -> AsyncIterator[bytes]:
    """The reply as SSE. What is ready together goes in one write: the role with the first words, and
    the finish with the usage and `[DONE]`."""
    out = writer.role()
    event: TurnEvent | None = first
    while event is not None:
        match event:
            case Delta(text=text):
                if text:
                    out += writer.content(text)
            case ToolCalls(tool_calls=calls):
                out += writer.tool_calls(calls)
            case Done(finish_reason=finish, usage=usage):
                out += writer.finish(finish)
                if include_usage:
                    out += writer.usage(usage)
                break  # after the finish, the stream only ends
            case Failed(text=text, code=code):
                # headers are sent: report the error in-band and end the stream cleanly
                out += writer.error(text, "server_error", code)
                break
            case _:
                assert_never(event)
        if out:
            yield out
            out = b""
        event = await anext(events, None)
    yield out + writer.done()


async def collect(first: TurnEvent, events: AsyncIterator[TurnEvent], model_name: str) -> Any:
    parts: list[str] = []
    calls: tuple[ToolCall, ...] = ()
    finish, usage = "stop", Usage()
    event: TurnEvent | None = first
    while event is not None:
        match event:
            case Delta(text=text):
                parts.append(text)
            case ToolCalls(tool_calls=more):
                calls = calls + more
            case Done(finish_reason=finish, usage=usage):
                pass
            case Failed():
                return error_response(event)
            case _:
                assert_never(event)
        event = await anext(events, None)
    return completion_json(model_name, "".join(parts), finish, usage, calls)


@router.get("/v1/models")
@router.get("/models")
async def list_models(request: Request, gateway: GatewayDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": p.key, "object": "model", "created": 0, "owned_by": "troupe", "name": p.name, "role": p.role}
            for p in gateway.catalog
        ],
    }

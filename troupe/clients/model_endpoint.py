"""Any OpenAI-compatible endpoint: `POST {base}/chat/completions`, streamed, read lean.

OPENAI_API_KEY / OPENAI_BASE_URL are read as the `openai` SDK reads them; a persona may name its own
model, base URL and key variable. Every failure becomes ModelUnavailable, naming the host only.

Why not the SDK here: on this hot path it cost ~3 ms of CPU per streamed reply (its request layer and
its SSE decoder, one JSON parse and object per token), more than the whole do-nothing pass-through
(bench/door_bench.py). This reader splits the stream on event boundaries, parses each event with orjson,
and hands on in one chunk all the text that arrived in one network read. What the SDK gave is kept:
its retry policy (connection errors, 408/409/429/5xx, exponential back-off, `Retry-After`, only
before a reply starts), its timeouts, and status errors with the endpoint's own message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from troupe.config.settings import Settings
from troupe.core.chat import ModelChunk, ModelRequest, ToolCall, Usage, estimate_tokens
from troupe.core.errors import ModelUnavailable

# httpx logs every request at INFO: a line per model call, in whichever process calls the model. Left
# alone when something has set its level (an operator's logging config, `troupe serve --verbose`).
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 8.0


def _wire_message(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    if message.name and message.role != "tool":
        out["name"] = message.name
    return out


class EndpointChatModel:
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 1,
    ) -> None:
        self.name = model
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise ModelUnavailable("No model endpoint is configured: set OPENAI_API_KEY or OPENAI_BASE_URL.")
            api_key = "not-needed"  # local OpenAI-compatible servers take no key
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.url = base + "/chat/completions"
        self.host = urlsplit(base).netloc
        self.max_retries = max_retries
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        for header, variable in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
            if value := os.environ.get(variable):
                self.headers[header] = value
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.name,
            "messages": [_wire_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        return body

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        try:
            response = await self._open(self._body(request))
            try:
                async for chunk in self._chunks(request, response):
                    yield chunk
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise ModelUnavailable(f"The model endpoint at {self.host} timed out.") from None
        except httpx.TransportError:
            raise ModelUnavailable(f"The model endpoint at {self.host} is unreachable.") from None

    async def _open(self, body: dict[str, Any]) -> httpx.Response:
        """Send the request and return the response once it is known to be a stream, retrying what the
        SDK retries. Only connection failures and refused statuses are retried: nothing was said yet."""
        attempt = 0
        while True:
            try:
                response = await self.client.send(
                    self.client.build_request("POST", self.url, content=orjson.dumps(body), headers=self.headers),
                    stream=True,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
                if attempt >= self.max_retries:
                    raise
                attempt += 1
                await asyncio.sleep(_backoff(attempt, None))
                continue
            if response.status_code < 400:
                return response
            detail = await response.aread()
            await response.aclose()
            if response.status_code == 400 and b"stream_options" in detail and "stream_options" in body:
                body = {k: v for k, v in body.items() if k != "stream_options"}  # an endpoint that lacks it
                continue
            if response.status_code in RETRIED_STATUSES and attempt < self.max_retries:
                attempt += 1
                await asyncio.sleep(_backoff(attempt, response.headers.get("retry-after")))
                continue
            raise ModelUnavailable(
                f"The model endpoint at {self.host} answered {response.status_code}: {_upstream_message(detail)}"
            )

    async def _chunks(self, request: ModelRequest, response: httpx.Response) -> AsyncIterator[ModelChunk]:
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        usage: Usage | None = None
        produced: list[str] = []
        pending = b""
        async for data in response.aiter_bytes():
            pending += data.replace(b"\r\n", b"\n") if b"\r" in data else data
            *events, pending = pending.split(b"\n\n")
            text: list[str] = []
            for event in events:
                payload = _data_of(event)
                if payload is None or payload == b"[DONE]":
                    continue
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if error := chunk.get("error"):
                    message = error.get("message") if isinstance(error, dict) else error
                    raise ModelUnavailable(f"The model endpoint at {self.host} failed: {str(message)[:300]}")
                if reported := chunk.get("usage"):
                    usage = Usage(
                        input_tokens=reported.get("prompt_tokens") or 0,
                        output_tokens=reported.get("completion_tokens") or 0,
                    )
                choices = chunk.get("choices")
                if not choices or not isinstance(choices[0], dict):
                    continue
                choice = choices[0]
                delta = choice.get("delta") or {}
                if content := delta.get("content"):
                    text.append(content)
                for call in delta.get("tool_calls") or ():
                    slot = calls.setdefault(call.get("index", 0), {"id": "", "name": "", "arguments": ""})
                    function = call.get("function") or {}
                    if call.get("id"):
                        slot["id"] = call["id"]
                    if function.get("name"):
                        slot["name"] += function["name"]
                    if function.get("arguments"):
                        slot["arguments"] += function["arguments"]
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if text:  # what arrived together leaves together: one chunk per read, not one per token
                content = "".join(text)
                produced.append(content)
                yield ModelChunk(content=content)
        if usage is None:  # the endpoint reported none: count it ourselves and say so
            prompt = sum(estimate_tokens(m.content or "") for m in request.messages)
            usage = Usage(input_tokens=prompt, output_tokens=estimate_tokens("".join(produced)), estimated=True)
        tool_calls = tuple(
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"] or "{}")
            for i, c in sorted(calls.items())
        )
        yield ModelChunk(tool_calls=tool_calls, finish_reason=finish, usage=usage)


def _data_of(event: bytes) -> bytes | None:
    """The data of one server-sent event (its `data:` lines joined), None for comments and the like."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].strip()
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _backoff(attempt: int, retry_after: str | None) -> float:
    """The SDK's: the server's Retry-After if it gives a short one, else 0.5 s doubling, with jitter."""
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = -1.0
        if 0 <= seconds <= 60:
            return seconds
    return min(0.5 * 2 ** (attempt - 1), MAX_BACKOFF_S) * (1 - 0.25 * random.random())


def _upstream_message(detail: bytes) -> str:
    try:
        body = orjson.loads(detail)
    except orjson.JSONDecodeError:
        return detail.decode(errors="replace").strip()[:300] or "no details"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return "no details"


def chat_model_for(
    settings: Settings, persona_model: str | None, persona_base_url: str | None, api_key_env: str | None
) -> EndpointChatModel:
    """The endpoint for a persona: its own model/URL/key variable if it names them, else the defaults."""
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ModelUnavailable(f"The persona's key variable {api_key_env} is not set.")
    elif settings.openai_api_key is not None:
        api_key = settings.openai_api_key.get_secret_value()
    return EndpointChatModel(
        persona_model or settings.model,
        base_url=persona_base_url or settings.openai_base_url,
        api_key=api_key,
        timeout_s=settings.model_timeout_s,
        max_retries=settings.model_max_retries,
    )

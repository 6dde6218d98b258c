"""Any OpenAI-compatible endpoint, through the official `openai` SDK (async, streaming).

OPENAI_API_KEY / OPENAI_BASE_URL are read by the SDK exactly as it documents; a persona may name its
own model, base URL and key variable. Every failure becomes ModelUnavailable, naming the host only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import openai

from troupe.chat_model import ModelChunk, ModelRequest, ToolCall, Usage, estimate_tokens
from troupe.config.settings import Settings
from troupe.errors import ModelUnavailable


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
        if api_key is None and not os.environ.get("OPENAI_API_KEY"):
            if base_url is None and not os.environ.get("OPENAI_BASE_URL"):
                raise ModelUnavailable("No model endpoint is configured: set OPENAI_API_KEY or OPENAI_BASE_URL.")
            api_key = "not-needed"  # local OpenAI-compatible servers take no key
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self.host = urlsplit(str(self.client.base_url)).netloc

    def _kwargs(self, request: ModelRequest, usage: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": request.model or self.name,
            "messages": [_wire_message(m) for m in request.messages],
            "stream": True,
        }
        if usage:
            kwargs["stream_options"] = {"include_usage": True}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        return kwargs

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        try:
            try:
                response = await self._create(self._kwargs(request, usage=True))
            except openai.BadRequestError as exc:
                if "stream_options" not in str(exc):
                    raise
                response = await self._create(self._kwargs(request, usage=False))
            async for chunk in self._chunks(request, response):
                yield chunk
        except openai.APIStatusError as exc:
            raise ModelUnavailable(
                f"The model endpoint at {self.host} answered {exc.status_code}: {_upstream_message(exc)}"
            ) from None
        except openai.APITimeoutError:
            raise ModelUnavailable(f"The model endpoint at {self.host} timed out.") from None
        except openai.APIConnectionError:
            raise ModelUnavailable(f"The model endpoint at {self.host} is unreachable.") from None
        except openai.OpenAIError as exc:
            raise ModelUnavailable(f"The model endpoint at {self.host} failed: {type(exc).__name__}") from None

    async def _create(self, body: dict[str, Any]) -> Any:
        """`chat.completions.create` minus its typed layer: the body is already plain JSON and chunks are read
        as plain JSON. The SDK's recursive walk over messages and tool schemas, and its model construction for
        every chunk, cost ~40 ms of CPU per streamed reply on this machine. The same SDK request path
        otherwise (auth, retries, timeouts, status errors, SSE parsing)."""
        return await self.client.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
        )

    async def _chunks(self, request: ModelRequest, response: Any) -> AsyncIterator[ModelChunk]:
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        usage: Usage | None = None
        produced: list[str] = []
        async for chunk in response:
            if not isinstance(chunk, dict):
                continue
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
                produced.append(content)
                yield ModelChunk(content=content)
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
        if usage is None:  # the endpoint reported none: count it ourselves and say so
            prompt = sum(estimate_tokens(m.content or "") for m in request.messages)
            usage = Usage(input_tokens=prompt, output_tokens=estimate_tokens("".join(produced)), estimated=True)
        tool_calls = tuple(
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"] or "{}")
            for i, c in sorted(calls.items())
        )
        yield ModelChunk(tool_calls=tool_calls, finish_reason=finish, usage=usage)


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return exc.message[:300] if exc.message else "no details"


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

"""The OpenAI chat-completions wire format, as pydantic models, and its SSE encoding.

Requests are validated here (wrong types become a 400 in OpenAI's error shape); responses are built
here so streaming and non-streaming replies are exactly what the `openai` SDK parses.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from troupe.core.chat import ChatMessage, ToolCall, ToolSpec, Usage


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class WireToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content

    def to_chat(self) -> ChatMessage:
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        return ChatMessage(
            role=role,  # type: ignore[arg-type]
            content=self.text(),
            name=self.name,
            tool_calls=tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in self.tool_calls or ()
            ),
            tool_call_id=self.tool_call_id,
        )


class WireFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class WireTool(BaseModel):
    type: Literal["function"] = "function"
    function: WireFunction


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """What voice platforms and the SDK send. Unknown fields are allowed (VAPI and ElevenLabs add some)."""

    model_config = ConfigDict(extra="allow")

    model: str = ""
    messages: list[WireMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    tools: list[WireTool] | None = None
    tool_choice: Any = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def client_tools(self) -> tuple[ToolSpec, ...]:
        if self.tool_choice == "none":
            return ()
        return tuple(
            ToolSpec(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
            for t in self.tools or ()
        )


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def tool_calls_json(calls: tuple[ToolCall, ...], *, with_index: bool) -> list[dict[str, Any]]:
    out = []
    for index, call in enumerate(calls):
        item: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if with_index:
            item["index"] = index
        out.append(item)
    return out


class ChunkWriter:
    """Builds the SSE lines of one streamed completion. A text delta is the one chunk a reply has many
    of, so it is a template: the bytes around the text are encoded once, the text by orjson."""

    def __init__(self, model: str, completion_id: str | None = None) -> None:
        self.id = completion_id or f"chatcmpl-{time.time_ns()}"
        self.created = int(time.time())
        self.model = model
        head = self._chunk([{"index": 0, "delta": {"content": ""}, "finish_reason": None}])
        self._before, self._after = head.split(b'"content":""', 1)
        self._before += b'"content":'

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def content(self, text: str) -> bytes:
        return self._before + orjson.dumps(text) + self._after

    def tool_calls(self, calls: tuple[ToolCall, ...]) -> bytes:
        delta = {"tool_calls": tool_calls_json(calls, with_index=True)}
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    def usage(self, usage: Usage) -> bytes:
        return self._chunk([], usage=usage_json(usage))

    @staticmethod
    def error(message: str, kind: str, code: str) -> bytes:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"


def completion_json(
    model: str, text: str, finish_reason: str, usage: Usage, tool_calls: tuple[ToolCall, ...] = ()
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
    if tool_calls:
        message["tool_calls"] = tool_calls_json(tool_calls, with_index=False)
    return {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_json(usage),
    }


def error_json(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}

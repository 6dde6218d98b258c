"""What a conversation is made of, in every layer: messages, tool calls and specs, usage, and the
request, chunks and result of a model call (the `ChatModel` protocol in `troupe.clients.chat_model`
speaks them). Tool calls arrive whole, and the last chunk carries `finish_reason` and `usage`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class ToolCall(_Frozen):
    id: str
    name: str
    arguments: str = "{}"  # JSON text, as the OpenAI wire format carries it


class ToolSpec(_Frozen):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ChatMessage(_Frozen):
    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class Usage(_Frozen):
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False  # counted locally because the endpoint reported none

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            estimated=self.estimated or other.estimated,
        )


class ModelRequest(_Frozen):
    messages: tuple[ChatMessage, ...]
    model: str = ""
    speaker: str = "Assistant"  # the persona's name; the offline model's transcript ends with "<speaker>:"
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()


class ModelChunk(_Frozen):
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


class ModelResult(_Frozen):
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    usage: Usage = Usage()


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 characters a token, at least one per word); used for budgets and
    for usage when an endpoint reports none."""
    if not text:
        return 0
    return max(len(text.split()), (len(text) + 3) // 4)

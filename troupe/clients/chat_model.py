"""The one interface every model sits behind: an OpenAI endpoint, the offline LocalModel, or the fake.

A `ChatModel` streams `ModelChunk`s for a `ModelRequest`. Tool calls arrive whole (the adapters assemble
the endpoint's deltas), and the last chunk carries `finish_reason` and `usage`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from troupe.core.chat import ModelChunk, ModelRequest, ModelResult, ToolCall, Usage


@runtime_checkable
class ChatModel(Protocol):
    """Anything that can answer a `ModelRequest`, streaming."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]: ...


async def complete(model: ChatModel, request: ModelRequest) -> ModelResult:
    """Drain a stream into one result (what non-streaming callers and life activities want)."""
    parts: list[str] = []
    calls: list[ToolCall] = []
    finish = "stop"
    usage = Usage()
    async for chunk in model.stream(request):
        parts.append(chunk.content)
        calls.extend(chunk.tool_calls)
        if chunk.finish_reason:
            finish = chunk.finish_reason
        if chunk.usage:
            usage = usage + chunk.usage
    return ModelResult(content="".join(parts), tool_calls=tuple(calls), finish_reason=finish, usage=usage)

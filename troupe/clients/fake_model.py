"""A scripted fake ChatModel, for tests and `troupe serve --model fake` demos.

Replies come from a list (replayed in order, then cycled), a function of the request, rules matched
against the last user message, or a default in-character echo. Streamed word by word with usage.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from troupe.core.chat import ModelChunk, ModelRequest, ToolCall, Usage, estimate_tokens

REQUESTS_KEPT = 200  # the newest requests, for tests to look at


@dataclass(frozen=True)
class ScriptedReply:
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    delay_s: float = 0.0  # before the first chunk: a time to first token
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class Rule:
    when: str  # a case-insensitive substring of the last user message; "" matches anything
    reply: ScriptedReply


Replyable = str | ScriptedReply | list[ToolCall]


def _reply(item: Replyable) -> ScriptedReply:
    if isinstance(item, ScriptedReply):
        return item
    if isinstance(item, str):
        return ScriptedReply(content=item)
    return ScriptedReply(tool_calls=tuple(item))


def _from_json(item: Any) -> ScriptedReply:
    if isinstance(item, str):
        return ScriptedReply(content=item)
    calls = tuple(
        ToolCall(
            id=f"call_{secrets.token_hex(6)}",
            name=call["name"],
            arguments=json.dumps(call.get("arguments", {})),
        )
        for call in item.get("tool_calls", ())
    )
    return ScriptedReply(
        content=item.get("content", ""),
        tool_calls=calls,
        delay_s=float(item.get("delay_s", 0)),
        chunk_delay_s=float(item.get("chunk_delay_s", 0)),
    )


def last_user_text(request: ModelRequest) -> str:
    return next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")


@dataclass
class ScriptedChatModel:
    replies: Sequence[Replyable] = ()
    function: Callable[[ModelRequest], Replyable] | None = None
    rules: Sequence[Rule] = ()
    name: str = "fake"
    requests: list[ModelRequest] = field(default_factory=list)
    _index: int = 0

    @classmethod
    def from_file(cls, path: Path | str) -> ScriptedChatModel:
        """A JSON list; each item a reply (string or {"content", "tool_calls": [{"name", "arguments"}]}) or
        a rule {"when": "substring", "reply": ...}. With rules, the first match answers; a rule answers
        with tool calls only when the last message is the user's, so a tool round always ends."""
        items = json.loads(Path(path).read_text())
        if not isinstance(items, list):
            raise ValueError(f"{path}: a fake-model script is a JSON list")
        if items and all(isinstance(i, dict) and "when" in i for i in items):
            return cls(rules=[Rule(str(i["when"]).lower(), _from_json(i["reply"])) for i in items])
        return cls(replies=[_from_json(i) for i in items])

    def _next(self, request: ModelRequest) -> ScriptedReply:
        if self.function is not None:
            return _reply(self.function(request))
        if self.rules:
            after_tool = bool(request.messages) and request.messages[-1].role == "tool"
            text = last_user_text(request).lower()
            for rule in self.rules:
                if rule.when in text and not (after_tool and rule.reply.tool_calls):
                    return rule.reply
            return ScriptedReply(content="Done." if after_tool else "")
        if self.replies:
            item = self.replies[self._index % len(self.replies)]
            self._index += 1
            return _reply(item)
        return ScriptedReply(content=f"{request.speaker} here. You said: {last_user_text(request)}")

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.requests.append(request)
        if len(self.requests) > REQUESTS_KEPT:  # a long demo or a benchmark must not grow without end
            del self.requests[:-REQUESTS_KEPT]
        reply = self._next(request)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        words = reply.content.split(" ") if reply.content else []
        for index, word in enumerate(words):
            if reply.chunk_delay_s and index:
                await asyncio.sleep(reply.chunk_delay_s)
            yield ModelChunk(content=word if index == len(words) - 1 else word + " ")
        prompt = sum(estimate_tokens(m.content or "") for m in request.messages)
        usage = Usage(input_tokens=prompt, output_tokens=estimate_tokens(reply.content) + 5 * len(reply.tool_calls))
        yield ModelChunk(
            tool_calls=reply.tool_calls, finish_reason="tool_calls" if reply.tool_calls else "stop", usage=usage
        )

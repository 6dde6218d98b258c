"""An OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

It speaks the real wire protocol (SSE chunks, usage, tool-call deltas), with a configurable time to
first token, token count and pace, failure modes, and a record of every request it received.
Run standalone: python -m troupe.testing.fake_openai --port 8999 --ttft-ms 50 --tokens 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from troupe.testing.loopback import LoopbackServer


@dataclass
class Behaviour:
    reply: str = "Hello from the upstream model."
    tokens: int | None = None  # if set, reply with this many "tokN " words instead
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    include_usage: bool = True  # honour stream_options.include_usage
    fail_status: int | None = None  # answer every request with this HTTP status
    fail_first: int = 0  # with fail_status: only the first this many requests fail (0: all of them)
    reject_stream_options: bool = False  # answer 400 to a request with stream_options, as some servers do
    tool_call: dict[str, Any] | None = None  # {"name": ..., "arguments": {...}}: answer with a tool call
    reply_fn: Callable[[dict[str, Any]], str] | None = None


@dataclass
class FakeOpenAI:
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def words(self, body: dict[str, Any]) -> list[str]:
        b = self.behaviour
        if b.tokens is not None:
            return [f"tok{i} " for i in range(b.tokens)]
        text = b.reply_fn(body) if b.reply_fn else b.reply
        parts = text.split(" ")
        return [p + " " for p in parts[:-1]] + [parts[-1]]

    def app(self) -> FastAPI:
        app = FastAPI()

        async def completions(request: Request) -> Any:
            body = await request.json()
            self.requests.append(body)
            b = self.behaviour
            if b.reject_stream_options and "stream_options" in body:
                unknown = {"error": {"message": "Unrecognized request argument: stream_options", "code": None}}
                return JSONResponse(unknown, status_code=400)
            if b.fail_status and (not b.fail_first or len(self.requests) <= b.fail_first):
                failure = {"error": {"message": "upstream failure", "type": "server_error", "code": None}}
                return JSONResponse(failure, status_code=b.fail_status)
            words = self.words(body)
            prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
            usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
            model = body.get("model", "fake")
            if not body.get("stream"):
                await asyncio.sleep(b.ttft_s + b.token_delay_s * len(words))
                message: dict[str, Any] = {"role": "assistant", "content": "".join(words)}
                finish = "stop"
                if b.tool_call and body.get("tools"):
                    message = {"role": "assistant", "content": None, "tool_calls": [self._call(with_index=False)]}
                    finish = "tool_calls"
                return {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage")) and b.include_usage
            return StreamingResponse(self._stream(body, words, usage, wants_usage), media_type="text/event-stream")

        app.post("/v1/chat/completions")(completions)
        app.post("/chat/completions")(completions)
        return app

    def _call(self, *, with_index: bool) -> dict[str, Any]:
        assert self.behaviour.tool_call is not None
        call = {
            "id": "call_fake1",
            "type": "function",
            "function": {
                "name": self.behaviour.tool_call["name"],
                "arguments": json.dumps(self.behaviour.tool_call.get("arguments", {})),
            },
        }
        return {"index": 0, **call} if with_index else call

    async def _stream(
        self, body: dict[str, Any], words: list[str], usage: dict[str, int], wants_usage: bool
    ) -> AsyncIterator[bytes]:
        b = self.behaviour
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", "fake")}  # fmt: skip

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

        await asyncio.sleep(b.ttft_s)
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        finish = "stop"
        if b.tool_call and body.get("tools"):
            yield event([{"index": 0, "delta": {"tool_calls": [self._call(with_index=True)]}, "finish_reason": None}])
            finish = "tool_calls"
        else:
            for index, word in enumerate(words):
                if index and b.token_delay_s:
                    await asyncio.sleep(b.token_delay_s)
                yield event([{"index": 0, "delta": {"content": word}, "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if wants_usage:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"


class FakeOpenAIServer(LoopbackServer):
    """Runs FakeOpenAI on loopback in a background thread (a context manager)."""

    label = "fake OpenAI server"

    def __init__(self, behaviour: Behaviour | None = None, port: int | None = None) -> None:
        self.fake = FakeOpenAI(behaviour or Behaviour())
        super().__init__(self.fake.app(), port)

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.fake.requests

    @property
    def behaviour(self) -> Behaviour:
        return self.fake.behaviour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--ttft-ms", type=float, default=50)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay-ms", type=float, default=0)
    args = parser.parse_args()
    fake = FakeOpenAI(
        Behaviour(tokens=args.tokens, ttft_s=args.ttft_ms / 1000, token_delay_s=args.token_delay_ms / 1000)
    )
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

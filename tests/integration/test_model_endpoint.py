"""EndpointChatModel against an OpenAI-compatible server on loopback: streaming, usage, tool calls, the
retries and fallbacks it keeps from the SDK, and failures that name the host only."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from troupe.clients.chat_model import complete
from troupe.clients.model_endpoint import EndpointChatModel
from troupe.core.chat import ChatMessage, ModelRequest, ToolSpec
from troupe.core.errors import ModelUnavailable
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.loopback import LoopbackServer

HELLO = ModelRequest(messages=(ChatMessage(role="user", content="hello"),), model="gpt-4o-mini")


async def test_streams_content_and_reports_usage() -> None:
    with FakeOpenAIServer(Behaviour(reply="Hi there, caller.")) as server:
        model = EndpointChatModel("gpt-4o-mini", base_url=server.base_url, api_key="k")
        chunks = [
            c
            async for c in model.stream(
                HELLO.model_copy(update={"temperature": 0.2, "max_tokens": 30, "stop": ("\n",)})
            )
        ]
        assert "".join(c.content for c in chunks) == "Hi there, caller."
        assert chunks[-1].usage.output_tokens == 3 and not chunks[-1].usage.estimated
        sent = server.requests[-1]
        assert sent["temperature"] == 0.2 and sent["max_tokens"] == 30 and sent["stop"] == ["\n"]
        assert sent["stream_options"] == {"include_usage": True}


async def test_usage_is_estimated_when_the_endpoint_sends_none() -> None:
    with FakeOpenAIServer(Behaviour(reply="Four words right here.", include_usage=False)) as server:
        result = await complete(EndpointChatModel("m", base_url=server.base_url, api_key="k"), HELLO)
        assert result.usage.estimated and result.usage.output_tokens > 0


async def test_streamed_tool_calls_arrive_whole() -> None:
    with FakeOpenAIServer(Behaviour(tool_call={"name": "recall", "arguments": {"query": "Dana"}})) as server:
        tools = (ToolSpec(name="recall", parameters={"type": "object", "properties": {}}),)
        result = await complete(
            EndpointChatModel("m", base_url=server.base_url, api_key="k"), HELLO.model_copy(update={"tools": tools})
        )
        assert result.finish_reason == "tool_calls"
        assert result.tool_calls[0].name == "recall" and json.loads(result.tool_calls[0].arguments) == {"query": "Dana"}
        assert server.requests[-1]["tools"][0]["function"]["name"] == "recall"


async def test_upstream_errors_and_a_closed_port_are_model_unavailable() -> None:
    with FakeOpenAIServer(Behaviour(fail_status=500)) as server:
        with pytest.raises(ModelUnavailable, match="answered 500"):
            await complete(
                EndpointChatModel("m", base_url=server.base_url, api_key="sk-very-secret", max_retries=0), HELLO
            )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelUnavailable) as caught:
        await complete(
            EndpointChatModel("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-very-secret", max_retries=0),
            HELLO,
        )
    assert f"127.0.0.1:{port}" in caught.value.message and "sk-very-secret" not in caught.value.message


async def test_a_refused_request_is_retried_before_the_reply_starts() -> None:
    with FakeOpenAIServer(Behaviour(reply="Second time lucky.", fail_status=503, fail_first=1)) as server:
        result = await complete(EndpointChatModel("m", base_url=server.base_url, api_key="k", max_retries=1), HELLO)
        assert result.content == "Second time lucky." and len(server.requests) == 2


async def test_an_endpoint_without_stream_options_is_asked_again_without_them() -> None:
    with FakeOpenAIServer(Behaviour(reply="Plain stream.", reject_stream_options=True)) as server:
        result = await complete(EndpointChatModel("m", base_url=server.base_url, api_key="k", max_retries=0), HELLO)
        assert result.content == "Plain stream." and result.usage.estimated
        assert "stream_options" in server.requests[0] and "stream_options" not in server.requests[1]


def streaming(*writes: bytes) -> LoopbackServer:
    """An endpoint that answers every request with these writes, each one send."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def answer() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for write in writes:
                yield write
                await asyncio.sleep(0.02)

        return StreamingResponse(events(), media_type="text/event-stream")

    return LoopbackServer(app)


def event(content: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\r\n\r\n' % content.encode()


async def test_tokens_that_arrive_together_leave_in_one_chunk_and_spaced_ones_apart() -> None:
    with streaming(event("a ") + event("b ") + event("c "), event("d "), b"data: [DONE]\n\n") as server:
        model = EndpointChatModel("m", base_url=f"{server.root}/v1", api_key="k")
        assert [c.content async for c in model.stream(HELLO) if c.content] == ["a b c ", "d "]


async def test_an_event_split_across_reads_is_read_whole() -> None:
    whole = event("split")
    with streaming(whole[:20], whole[20:], b"data: [DONE]\n\n") as server:
        model = EndpointChatModel("m", base_url=f"{server.root}/v1", api_key="k")
        assert [c.content async for c in model.stream(HELLO) if c.content] == ["split"]


async def test_an_error_event_mid_stream_is_model_unavailable() -> None:
    with streaming(event("Half"), b'data: {"error":{"message":"overloaded"}}\n\n') as server:
        model = EndpointChatModel("m", base_url=f"{server.root}/v1", api_key="k")
        seen: list[str] = []
        with pytest.raises(ModelUnavailable, match="failed: overloaded"):
            async for chunk in model.stream(HELLO):
                seen.append(chunk.content)
        assert seen == ["Half"]

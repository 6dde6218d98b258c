"""EndpointChatModel through the real `openai` SDK against an OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import socket

import pytest

from troupe.chat_model import ChatMessage, ModelRequest, ToolSpec, complete
from troupe.errors import ModelUnavailable
from troupe.integrations.model_endpoint import EndpointChatModel
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer

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

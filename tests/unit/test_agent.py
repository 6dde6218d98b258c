"""The agent loop: streaming, tool rounds, client tools handed back, iteration bound, budget guard."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from troupe.actors.agent import AgentLoop, answer_once
from troupe.actors.session import new_input
from troupe.actors.tools import PersonaTools
from troupe.core.chat import ChatMessage, ModelChunk, ModelRequest, ToolCall, ToolSpec, Usage
from troupe.core.errors import BudgetExceeded


class Replay:
    """A minimal ChatModel: replays scripted turns and records what it was asked."""

    name = "replay"

    def __init__(self, *turns: str | list[ToolCall]) -> None:
        self.turns = list(turns)
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.requests.append(request)
        turn = self.turns.pop(0)
        if isinstance(turn, str):
            for word in turn.split(" "):
                yield ModelChunk(content=word + " ")
            yield ModelChunk(finish_reason="stop", usage=Usage(input_tokens=100, output_tokens=10))
        else:
            yield ModelChunk(
                tool_calls=tuple(turn),
                finish_reason="tool_calls",
                usage=Usage(input_tokens=100, output_tokens=5),
            )


class Memory:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str]] = []

    async def add_memory(self, persona, subject, content, *, kind="note", source="", importance=0.5):
        self.entries.append((persona, subject, content))

    async def forget_memory(self, persona, memory_id, subject=None):
        return False

    async def recall(self, persona, *, subject=None, query=None, limit=8):
        class Entry:
            def __init__(self, content: str) -> None:
                self.content = content

        return [Entry(c) for p, s, c in self.entries if p == persona and (subject is None or s == subject)]


def call(name: str, **args: object) -> ToolCall:
    return ToolCall(id=f"call_{name}", name=name, arguments=json.dumps(args))


SYSTEM = ChatMessage(role="system", content="You are Tony.")
HELLO = ChatMessage(role="user", content="hello")


async def test_streams_deltas_and_accounts_usage():
    loop = AgentLoop(speaker="Tony", model=Replay("hi there friend"), model_name="gpt-4o-mini")
    events = [e async for e in loop.run([SYSTEM, HELLO])]
    assert [e.text for e in events if e.kind == "delta"] == ["hi ", "there ", "friend "]
    assert events[-1].kind == "done" and events[-1].finish_reason == "stop"
    assert loop.outcome.delta.llm_calls == 1
    assert loop.outcome.delta.input_tokens == 100
    assert loop.outcome.delta.cost_usd > 0 and loop.outcome.delta.cost_known
    assert [m.role for m in loop.outcome.new_messages] == ["assistant"]


async def test_own_tools_run_and_the_model_is_called_again():
    memory = Memory()
    tools = PersonaTools(persona="Tony", allowed=["remember", "recall"], store=memory, subject="+1555")
    model = Replay([call("remember", fact="Dana runs payments")], "Got it.")
    loop = AgentLoop(speaker="Tony", model=model, model_name="fake", toolbox=tools)
    outcome = await answer_once(loop, [SYSTEM, HELLO])
    assert memory.entries == [("Tony", "+1555", "Dana runs payments")]
    assert outcome.text == "Got it. "
    assert [m.role for m in outcome.new_messages] == ["assistant", "tool", "assistant"]
    assert outcome.delta.tool_calls == 1 and outcome.delta.llm_calls == 2
    # the second call saw the tool's result
    assert model.requests[1].messages[-1].role == "tool"
    assert {t.name for t in model.requests[0].tools} == {"remember", "recall", "forget"}


async def test_client_tools_are_handed_back_to_the_caller():
    weather = ToolSpec(name="get_weather", parameters={"type": "object", "properties": {}})
    loop = AgentLoop(speaker="Tony", model=Replay([call("get_weather", city="Oslo")]), model_name="fake")
    events = [e async for e in loop.run([SYSTEM, HELLO], client_tools=[weather])]
    assert events[-2].kind == "tool_calls" and events[-2].tool_calls[0].name == "get_weather"
    assert events[-1].finish_reason == "tool_calls"


async def test_iterations_are_bounded_and_the_last_offers_no_tools():
    memory = Memory()
    tools = PersonaTools(persona="Tony", allowed=["recall"], store=memory)
    model = Replay([call("recall")], [call("recall")], "Final answer.")
    loop = AgentLoop(speaker="Tony", model=model, model_name="fake", toolbox=tools, max_iterations=3)
    outcome = await answer_once(loop, [SYSTEM, HELLO])
    assert outcome.text.strip() == "Final answer."
    assert model.requests[-1].tools == ()


async def test_budget_guard_stops_before_a_model_call():
    def guard(spent: float) -> None:
        raise BudgetExceeded("over budget")

    model = Replay("never")
    loop = AgentLoop(speaker="Tony", model=model, model_name="fake", budget_guard=guard)
    with pytest.raises(BudgetExceeded):
        await answer_once(loop, [SYSTEM, HELLO])
    assert model.requests == []


async def test_a_failing_tool_is_reported_to_the_model_not_raised():
    async def broken(specialist: str, task: str) -> str:
        raise RuntimeError("specialist crashed")

    tools = PersonaTools(persona="Tony", allowed=["spawn_agent"], store=Memory(), team=["Priya"], delegate=broken)
    model = Replay([call("spawn_agent", specialist="Priya", task="x")], "Sorry, that failed.")
    outcome = await answer_once(
        AgentLoop(speaker="Tony", model=model, model_name="fake", toolbox=tools), [SYSTEM, HELLO]
    )
    assert "specialist crashed" in outcome.new_messages[1].content
    assert outcome.text.startswith("Sorry")


async def test_spawn_agent_only_reaches_the_team():
    async def delegate(specialist: str, task: str) -> str:
        return f"{specialist} did {task}"

    tools = PersonaTools(persona="Tony", allowed=["spawn_agent"], store=Memory(), team=["Priya"], delegate=delegate)
    assert await tools.run(call("spawn_agent", specialist="priya", task="a review")) == "Priya did a review"
    assert "not on your team" in await tools.run(call("spawn_agent", specialist="Maya", task="x"))


def test_new_input_takes_the_clients_tail_and_system_message():
    messages = (
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="one"),
        ChatMessage(role="assistant", content="reply"),
        ChatMessage(role="user", content="two"),
        ChatMessage(role="user", content="three"),
    )
    added, system = new_input(messages)
    assert [m.content for m in added] == ["two", "three"]
    assert system == "Be brief."

"""The runtime core on a real Ray: sessions, supervision, durability, budgets and failures."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import ray
from ray.exceptions import RayActorError

from tests.integration.conftest import make_settings, write_script
from troupe.core.chat import ChatMessage
from troupe.core.errors import PersonaNotFound, SessionLimit, StoreUnavailable
from troupe.core.messages import TurnEvent, TurnRequest
from troupe.runtime import Runtime
from troupe.store import Store


async def say(runtime: Runtime, caller: str, text: str, persona: str = "Tony", client: Any = None) -> list[TurnEvent]:
    client = client or runtime.client()
    request = TurnRequest(caller_id=caller, persona=persona, messages=(ChatMessage(role="user", content=text),))
    return [event async for event in client.turn(request)]


def text_of(events: list[TurnEvent]) -> str:
    return "".join(e.text for e in events if e.kind == "delta")


async def wait_for(predicate: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def dead(handle: Any) -> bool:
    try:
        await handle.ping.remote()
    except RayActorError:
        return True
    return False


async def processes(runtime: Runtime, **filters: Any) -> list[Any]:
    return await runtime.orchestrator.list_processes.remote(**filters)


@pytest.fixture
def runtime(start_runtime: Any, tmp_path: Path) -> Runtime:
    script = write_script(
        tmp_path / "script.json",
        [
            {
                "when": "delegate",
                "reply": {
                    "tool_calls": [
                        {
                            "name": "spawn_agent",
                            "arguments": {"specialist": "Priya", "task": "Review the API design"},
                        }
                    ]
                },
            },
            {"when": "", "reply": "Hello from the fake model."},
        ],
    )
    return start_runtime(make_settings(tmp_path, fake_script=script))


async def test_a_turn_streams_and_is_kept_in_the_store(runtime: Runtime, tmp_path: Path) -> None:
    events = await say(runtime, "+14155550001", "Hi Tony, how are things?")
    assert events[-1].kind == "done"
    assert "Hello from the fake model." in text_of(events)

    sessions = await runtime.orchestrator.list_sessions.remote()
    assert [(s.caller_id, s.agent, s.status) for s in sessions] == [("+14155550001", "Tony", "running")]

    # metrics are reported off the hot path, so they land a moment after the reply
    async def counted() -> Any:
        found = (await processes(runtime, kind="session", agent="Tony"))[0]
        return found if found.metrics.llm_calls == 1 else None

    session_process = await wait_for(counted)
    assert session_process.metrics.output_tokens > 0

    store = await Store.open(runtime.settings.resolved_database_url)
    try:
        session = await store.active_session("+14155550001", "Tony")
        assert session is not None
        messages = await store.load_messages(session.id)
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[0].content == "Hi Tony, how are things?"
    finally:
        await store.close()


async def test_every_actor_is_a_running_process(runtime: Runtime) -> None:
    everything = await processes(runtime)
    kinds = {(p.kind, p.agent) for p in everything if p.status == "running"}
    for name in ("Alex", "Tony", "Maya", "Jordan", "Riley"):
        assert ("persona", name) in kinds
        assert ("life_loop", name) in kinds
    assert any(p.kind == "orchestrator" for p in everything)
    assert all(len(p.id) == 8 and int(p.id, 16) >= 0 for p in everything)
    pool = await processes(runtime, kind="session", agent="pool")
    assert pool and pool[0].status == "pending"


async def test_killing_a_session_actor_loses_no_acknowledged_message(runtime: Runtime) -> None:
    client = runtime.client()
    caller = "+14155550002"
    first = await say(runtime, caller, "Remember the number forty-two.", client=client)
    assert first[-1].kind == "done"
    lease = await client.lease(caller, "Tony")
    ray.kill(lease.handle, no_restart=True)
    await wait_for(lambda: dead(lease.handle))  # ray.kill only asks; the next turn must meet a dead actor

    second = await say(runtime, caller, "What number did I say?", client=client)
    assert second[-1].kind == "done"

    async def restarted() -> Any:  # the replacement binds in the background, off the caller's path
        info = (await runtime.orchestrator.get_process.remote(lease.process_id))[0]
        return info if info.restarts == 1 else None

    info = await wait_for(restarted, within=10)
    assert info is not None and info.status == "running"
    store = await Store.open(runtime.settings.resolved_database_url)
    try:
        session = await store.active_session(caller, "Tony")
        said = [m.content for m in await store.load_messages(session.id) if m.role == "user"]
        assert said == ["Remember the number forty-two.", "What number did I say?"]
    finally:
        await store.close()


async def test_killing_a_persona_actor_brings_it_back(runtime: Runtime) -> None:
    persona = (await processes(runtime, kind="persona", agent="Maya"))[0]
    handle = ray.get_actor("persona-maya", namespace=runtime.settings.namespace)
    ray.kill(handle, no_restart=True)

    async def restarted() -> Any:
        info = (await runtime.orchestrator.get_process.remote(persona.id))[0]
        return info if info.restarts == 1 and info.status == "running" else None

    await wait_for(restarted)
    answer = await runtime.orchestrator.ask_persona.remote("Maya", "How is the launch going?", "Tony")
    assert "Hello from the fake model." in answer


async def test_spawn_agent_runs_a_child_task_process(runtime: Runtime) -> None:
    events = await say(runtime, "+14155550003", "Please delegate the API review.")
    assert events[-1].kind == "done"
    tasks = await processes(runtime, kind="task")
    assert len(tasks) == 1
    task = tasks[0]
    assert task.agent == "Priya" and task.status == "completed"
    assert task.task == "Review the API design"
    parent, children = await runtime.orchestrator.get_process.remote(task.parent_id)
    assert parent.kind == "session" and [c.id for c in children] == [task.id]

    async def counted() -> Any:
        found = (await runtime.orchestrator.get_process.remote(task.parent_id))[0]
        return found.metrics.tool_calls == 1

    await wait_for(counted)


async def test_unknown_persona_is_a_clear_error(runtime: Runtime) -> None:
    with pytest.raises(PersonaNotFound) as caught:
        await say(runtime, "+14155550004", "hello", persona="Zed")
    assert "Zed" in caught.value.message and "Tony" in caught.value.message


async def test_at_capacity_an_idle_session_makes_room_and_only_a_full_house_mid_turn_is_refused(
    start_runtime: Any, tmp_path: Path
) -> None:
    script = write_script(
        tmp_path / "script.json",
        [{"when": "slow", "reply": {"content": "one two three four five six", "chunk_delay_s": 0.5}},
         {"when": "", "reply": "Hello from the fake model."}],
    )  # fmt: skip
    runtime = start_runtime(make_settings(tmp_path, max_sessions=1, fake_script=script))
    assert (await say(runtime, "+14155550005", "hi, I am Ada"))[-1].kind == "done"
    # the first caller is idle: the second is served, and the first one's conversation is summarised
    assert (await say(runtime, "+14155550006", "hi"))[-1].kind == "done"
    store = await Store.open(runtime.settings.resolved_database_url, migrate=False)
    try:
        memories = await wait_for(lambda: store.recall("Tony", subject="+14155550005"))
        assert memories[0].kind == "summary"
    finally:
        await store.close()
    # every session mid-turn: the new caller is refused, clearly, with a 503
    client = runtime.client()
    slow = TurnRequest(caller_id="+14155550006", persona="Tony", messages=(ChatMessage(role="user", content="slow"),))
    events = client.turn(slow).__aiter__()
    assert (await anext(events)).kind == "delta"
    with pytest.raises(SessionLimit) as caught:
        await say(runtime, "+14155550007", "hi")
    assert "capacity" in caught.value.message.lower() and caught.value.status == 503
    assert [e async for e in events][-1].kind == "done"


async def test_unreachable_database_names_url_without_password(ray_session: None, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url="postgresql://troupe:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(StoreUnavailable) as caught:
        Runtime.start(settings)
    assert "127.0.0.1:1" in caught.value.message
    assert "hunter2" not in caught.value.message
    with pytest.raises(ValueError):  # no orchestrator left behind
        ray.get_actor("orchestrator", namespace=settings.namespace)


async def test_a_triggered_life_activity_is_logged_and_reaches_conversations(runtime: Runtime) -> None:
    output = await runtime.orchestrator.trigger.remote("Tony", "journal")
    assert output == "Hello from the fake model."
    store = await Store.open(runtime.settings.resolved_database_url)
    try:
        runs = await store.life_runs("Tony", "journal")
        assert [(r.status, r.output) for r in runs] == [("completed", "Hello from the fake model.")]
        day = runs[0].triggered_at.astimezone(ZoneInfo("America/Los_Angeles")).date().isoformat()  # Tony's day
        entry = (await store.journal("Tony", day))[0].text
        assert re.fullmatch(r"\*\*\d\d:\d\d\*\* Hello from the fake model\.", entry)  # stamped with his local time
    finally:
        await store.close()
    life = (await processes(runtime, kind="life_loop", agent="Tony"))[0]
    assert life.status == "running"

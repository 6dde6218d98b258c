"""The orchestrator's registry as plain logic over a real store (SQLite in a temporary file): batched
writes, rebuilding after a crash, the bounded event log, trimming finished rows and spend by agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from troupe.actors import registry as registry_module
from troupe.actors.registry import EVENT_LOG, FINISHED_KEPT, Registry, restarts_by_kind
from troupe.core.messages import MetricsDelta, ProcessInfo, ProcessKind, new_process_id, utcnow
from troupe.store import Store


class Background:
    """What the orchestrator's `_background` does, with the tasks kept to wait on."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self, coro: Awaitable[Any]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)
        self.tasks.clear()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/t.db", migrate=True)
    yield opened
    await opened.close()


def process(agent: str = "Tony", kind: ProcessKind = "task", **fields: Any) -> ProcessInfo:
    return ProcessInfo(id=new_process_id(), kind=kind, agent=agent, name=f"{agent.lower()}-{kind}", **fields)


async def test_finished_processes_reach_the_store_in_one_batch(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "FLUSH_DELAY_S", 0.01)
    batches: list[list[str]] = []
    save = store.save_processes

    async def counted(infos: list[ProcessInfo]) -> None:
        batches.append([info.id for info in infos])
        await save(infos)

    monkeypatch.setattr(store, "save_processes", counted)
    background = Background()
    registry = Registry(background, store)
    ids = [registry.register(process(agent)) for agent in ("Tony", "Ann", "Bob")]
    for pid in ids:
        registry.set_status(pid, "running")
    registry.set_status(ids[0], "completed")
    registry.set_status(ids[1], "failed", "boom")
    assert len(background.tasks) == 1  # one delayed flush for everything that finished meanwhile
    await background.settle()
    assert len(batches) == 1 and sorted(batches[0]) == sorted(ids)
    assert registry.dirty == set()
    stored = {info.id: info for info in await store.load_processes()}
    assert stored[ids[0]].status == "completed" and stored[ids[0]].ended_at is not None
    assert stored[ids[1]].status == "failed" and stored[ids[1]].error == "boom"
    assert stored[ids[2]].status == "running"
    assert [e["type"] for e in registry.events_since(0)].count("process.started") == 3
    await registry.flush()
    assert len(batches) == 1  # nothing changed since: nothing written


async def test_a_rebuild_after_a_crash_marks_what_was_alive_as_interrupted(store: Store) -> None:
    background = Background()
    before = Registry(background, store)
    running = before.register(process("Tony", "persona"))
    before.set_status(running, "running")
    pending = before.register(process("pool", "session"))
    done = before.register(process("Ann"))
    before.set_status(done, "completed")
    before.report(done, MetricsDelta(cost_usd=0.25))
    await before.flush()  # then the orchestrator's process dies: no clean shutdown
    for task in background.tasks:
        task.cancel()

    after = Registry(Background(), store)
    await after.rebuild()
    assert set(after.processes) == {running, pending, done}
    for pid in (running, pending):
        assert after.processes[pid].status == "failed"
        assert after.processes[pid].error == "interrupted: the orchestrator restarted"
        assert after.processes[pid].ended_at is not None
    assert after.processes[done].status == "completed" and after.processes[done].error is None
    assert after.spend == {"Tony": 0.0, "pool": 0.0, "Ann": 0.25}
    stored = {info.id: info for info in await store.load_processes()}
    assert stored[running].status == "failed" and stored[pending].status == "failed"  # written back at once


async def test_the_event_log_is_bounded_and_pages() -> None:
    registry = Registry(Background())
    for i in range(EVENT_LOG + 50):
        registry.emit("tick", n=i)
    assert len(registry.events) == EVENT_LOG and registry.event_seq == EVENT_LOG + 50
    first = registry.events_since(0, limit=200)
    assert [e["seq"] for e in first] == list(range(51, 251))  # the oldest 50 are gone
    second = registry.events_since(first[-1]["seq"], limit=200)
    assert second[0]["seq"] == 251 and len(second) == 200
    assert registry.events_since(registry.event_seq) == []
    assert first[0]["type"] == "tick" and first[0]["n"] == 50 and "at" in first[0]


async def test_trimming_keeps_at_most_the_newest_finished_rows(store: Store) -> None:
    registry = Registry(Background(), store)
    start = utcnow()
    finished = []
    for i in range(FINISHED_KEPT + 10):
        info = process(started_at=start, ended_at=start + timedelta(seconds=i), status="completed")
        finished.append(registry.register(info))
    alive = registry.register(process("Tony", "persona", status="running"))
    await registry.flush()
    unsaved = registry.register(process(started_at=start - timedelta(days=1), status="failed"))
    registry.trim_finished()
    kept = [p for p in registry.processes.values() if p.status in ("completed", "failed")]
    assert len(kept) == FINISHED_KEPT + 1  # the unsaved row stays until it is written
    assert unsaved in registry.processes and alive in registry.processes
    assert all(pid not in registry.processes for pid in finished[:10])  # the oldest saved ones go
    assert all(pid in registry.processes for pid in finished[10:])
    await registry.flush()
    registry.trim_finished()
    assert len([p for p in registry.processes.values() if p.status in ("completed", "failed")]) == FINISHED_KEPT
    assert unsaved not in registry.processes and alive in registry.processes


async def test_spend_accumulates_per_agent_from_reports() -> None:
    registry = Registry(Background())
    tony_a = registry.register(process("Tony", "session"))
    tony_b = registry.register(process("Tony"))
    ann = registry.register(process("Ann"))
    registry.report(tony_a, MetricsDelta(input_tokens=10, output_tokens=5, llm_calls=1, cost_usd=0.5))
    registry.report(tony_b, MetricsDelta(cost_usd=0.25))
    registry.report(ann, MetricsDelta(cost_usd=1.0))
    before = registry.report(tony_a, MetricsDelta(llm_calls=1, cost_usd=0.5), status="running")
    assert registry.spend == {"Tony": 1.25, "Ann": 1.0}
    assert before is not None and before.status == "pending"  # the row as it was before this report
    row = registry.processes[tony_a]
    assert row.status == "running" and row.metrics.llm_calls == 2 and row.metrics.estimated_cost == 1.0
    assert registry.report("nobody", MetricsDelta(cost_usd=9.0)) is None
    assert "nobody" not in registry.spend
    registry.report(ann, MetricsDelta(), status="running", error="the model timed out")
    assert registry.processes[ann].error == "the model timed out"
    assert registry.events_since(0)[-1]["type"] == "turn.failed"
    registry.report(ann, MetricsDelta(), status="running")  # a good turn clears the last error
    assert registry.processes[ann].error is None


async def test_reads_filter_sort_and_count_restarts() -> None:
    registry = Registry(Background())
    parent = registry.register(process("Tony", "persona", status="running", restarts=2))
    child = registry.register(process("Ann", parent_id=parent))
    registry.register(process("Ann", "life_loop", restarts=1))
    assert [p.id for p in registry.list_processes(agent="tony")] == [parent]
    assert {p.kind for p in registry.list_processes(status="pending")} == {"task", "life_loop"}
    assert [p.id for p in registry.list_processes(kind="task")] == [child]
    found = registry.get_process(parent)
    assert found is not None and [p.id for p in found[1]] == [child]
    assert registry.get_process("missing") is None
    assert restarts_by_kind(registry.processes.values()) == {"persona": 2, "task": 0, "life_loop": 1}

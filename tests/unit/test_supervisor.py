"""The supervisor without Ray: fake actors whose `watch.remote()` is a future the test resolves (the
actor died) and a registry with no store. Restarts, the policy saying stop, restart_all, children stopped
on purpose, the hooks for special kinds and the one-start-per-core limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import RayActorError

from troupe.actors.registry import Registry
from troupe.actors.supervisor import Child, Supervisor
from troupe.core.messages import ProcessInfo, ProcessKind, new_process_id
from troupe.core.supervision import Policy


class FakeActor:
    """An actor handle whose `watch.remote()` calls return when the test says it died (each call is a
    future of its own, as each Ray call is; `pending` are those neither answered nor cancelled)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[asyncio.Future[None]] = []
        self.dead = False
        self.watch = SimpleNamespace(remote=self._watch)

    def _watch(self) -> asyncio.Future[None]:
        self.calls.append(asyncio.get_running_loop().create_future())
        if self.dead:  # a call to an actor that has died fails at once
            self._fail(self.calls[-1])
        return self.calls[-1]

    @property
    def pending(self) -> int:
        return sum(not call.done() for call in self.calls)

    def die(self) -> None:
        self.dead = True
        for call in self.calls:
            if not call.done():
                self._fail(call)

    @staticmethod
    def _fail(call: asyncio.Future[None]) -> None:
        call.set_exception(RayActorError())
        call.exception()  # retrieved: an actor nobody watches dies quietly


class Actors:
    """A factory of fake actors for one child, counting what it made."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.made: list[FakeActor] = []

    async def __call__(self) -> FakeActor:
        actor = FakeActor(f"{self.name}-{len(self.made)}")
        self.made.append(actor)
        return actor


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    tasks: list[asyncio.Future[Any]] = []
    yield Registry(lambda coro: tasks.append(asyncio.ensure_future(coro)))  # no store: flushes do nothing
    for task in tasks:
        task.cancel()


@pytest.fixture
def killed() -> list[Any]:
    return []


SUPERVISORS: list[Supervisor] = []
NO_BACKOFF = Policy(backoff_s=0)


@pytest.fixture(autouse=True)
def _stop_watchers() -> Iterator[None]:
    yield
    for supervisor in SUPERVISORS:
        for child in supervisor.children.values():
            supervisor.unwatch(child)
    SUPERVISORS.clear()


def make(registry: Registry, killed: list[Any], slots: int = 2, **hooks: Any) -> Supervisor:
    supervisor = Supervisor(registry, spawn_slots=slots, kill=killed.append, **hooks)
    SUPERVISORS.append(supervisor)
    return supervisor


def process(name: str, kind: ProcessKind = "persona") -> ProcessInfo:
    return ProcessInfo(id=new_process_id(), kind=kind, agent="Tony", name=name, task="test")


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def supervised(
    supervisor: Supervisor, name: str, policy: Policy | None = None, group: str = "personas"
) -> tuple[Child, Actors]:
    actors = Actors(name)
    child = await supervisor.supervise(process(name), group, policy or NO_BACKOFF, actors)
    return child, actors


def event_types(registry: Registry) -> list[str]:
    return [e["type"] for e in registry.events_since(0)]


async def test_a_child_that_dies_is_restarted_and_counted(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed)
    child, actors = await supervised(supervisor, "tony-main")
    assert registry.processes[child.process_id].status == "running"
    first = child.handle
    first.die()
    await until(lambda: child.generation == 1 and registry.processes[child.process_id].restarts == 1)
    assert child.handle is actors.made[1] and killed == [first]
    assert registry.processes[child.process_id].status == "running"
    restarted = [e for e in registry.events_since(0) if e["type"] == "process.restarted"]
    assert restarted == [{**restarted[0], "process": child.process_id, "restarts": 1}]
    died = next(e for e in registry.events_since(0) if e["type"] == "process.died")
    assert died["decision"] == "restart" and died["process"] == child.process_id
    child.handle.die()  # the new actor is watched in its turn
    await until(lambda: registry.processes[child.process_id].restarts == 2)
    assert len(actors.made) == 3 and supervisor.children[child.process_id] is child


@pytest.mark.parametrize("strategy", ["stop", "escalate"])
async def test_a_policy_that_says_stop_marks_it_failed_and_drops_it(
    registry: Registry, killed: list[Any], strategy: Any
) -> None:
    supervisor = make(registry, killed)
    child, actors = await supervised(supervisor, "tony-main", Policy(strategy=strategy))
    child.handle.die()
    await until(lambda: child.process_id not in supervisor.children)
    info = registry.processes[child.process_id]
    assert info.status == "failed" and info.error == f"died; policy is {strategy}"
    assert len(actors.made) == 1 and info.restarts == 0
    assert ("process.escalated" in event_types(registry)) == (strategy == "escalate")
    assert "process.restarted" not in event_types(registry)


async def test_too_many_restarts_escalate(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed)
    child, actors = await supervised(supervisor, "tony-main", Policy(max_restarts=1, backoff_s=0))
    child.handle.die()
    await until(lambda: child.generation == 1)
    child.handle.die()
    await until(lambda: child.process_id not in supervisor.children)
    assert len(actors.made) == 2 and "process.escalated" in event_types(registry)
    assert registry.processes[child.process_id].status == "failed"


async def test_restart_all_restarts_the_groups_siblings(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed)
    policy = Policy(strategy="restart_all")
    a, a_actors = await supervised(supervisor, "a", policy, group="life")
    b, b_actors = await supervised(supervisor, "b", policy, group="life")
    other, other_actors = await supervised(supervisor, "other", policy, group="personas")
    b_first = b.handle
    a.handle.die()
    await until(lambda: a.generation == 1 and b.generation == 1 and registry.processes[b.process_id].restarts == 1)
    assert len(a_actors.made) == 2 and len(b_actors.made) == 2
    assert b_first in killed and b.handle is b_actors.made[1]
    assert other.generation == 0 and len(other_actors.made) == 1
    b_first.die()  # the sibling's old actor going away now is old news: no second restart
    await settle()
    assert b.generation == 1 and len(b_actors.made) == 2


async def test_a_child_stopped_on_purpose_is_not_restarted(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed)
    flagged, flagged_actors = await supervised(supervisor, "flagged")
    unwatched, unwatched_actors = await supervised(supervisor, "unwatched")
    flagged.stopping = True
    supervisor.unwatch(unwatched)
    assert unwatched.stopping
    flagged.handle.die()
    unwatched.handle.die()
    await settle()
    assert len(flagged_actors.made) == 1 and len(unwatched_actors.made) == 1
    assert flagged.generation == 0 and unwatched.generation == 0
    assert "process.died" not in event_types(registry)


async def test_an_actor_let_go_and_watched_again_holds_one_watch_call(registry: Registry, killed: list[Any]) -> None:
    """A pooled session actor is watched for each caller it takes and let go after each: every watch
    call ends with its watch, or the actor would hold one more call a caller (up to Ray's 1,000)."""
    supervisor = make(registry, killed)
    actor = FakeActor("pooled")
    for caller in range(5):
        child = Child(process_id=f"s{caller}", group="sessions", policy=Policy(), factory=Actors("s"), handle=actor)
        supervisor.watch(child, lambda generation: asyncio.sleep(0))
        assert actor.pending == 1
        supervisor.unwatch(child)
        await settle()
        assert actor.pending == 0
    assert len(actor.calls) == 5


async def test_a_custom_on_death_gets_the_generation_that_died(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed)
    child = Child(process_id="s", group="sessions", policy=Policy(), factory=Actors("s"), handle=FakeActor("s"))
    seen: list[int] = []

    async def on_death(generation: int) -> None:
        seen.append(generation)

    supervisor.watch(child, on_death)
    child.handle.die()
    await until(lambda: seen == [0])
    assert child.generation == 0  # the caller's handler decides; the policy did not run
    assert "process.died" not in event_types(registry)


async def test_special_kinds_restart_and_fail_through_the_hooks(registry: Registry, killed: list[Any]) -> None:
    failure: list[str | None] = [None]
    after_crash = Actors("after-crash")

    def restart_factory(child: Child, info: ProcessInfo) -> Callable[[], Awaitable[Any]]:
        return after_crash if info.kind == "local_model" else child.factory

    def failure_of(info: ProcessInfo) -> str | None:
        return failure[0] if info.kind == "local_model" else None

    supervisor = make(registry, killed, restart_factory=restart_factory, failure_of=failure_of)
    model = Actors("model")
    child = await supervisor.supervise(process("model", "local_model"), "model", NO_BACKOFF, model)
    child.handle.die()
    await until(lambda: child.generation == 1 and registry.processes[child.process_id].restarts == 1)
    assert child.handle is after_crash.made[0] and len(model.made) == 1

    failure[0] = "no GPU here"  # the restarted model cannot run: failed, not watched, not counted
    child.handle.die()
    await until(lambda: registry.processes[child.process_id].status == "failed")
    info = registry.processes[child.process_id]
    assert info.error == "no GPU here" and info.restarts == 1 and child.process_id in supervisor.children
    child.handle.die()
    await settle()
    assert len(after_crash.made) == 2

    broken = await supervisor.supervise(process("model2", "local_model"), "model", Policy(), Actors("model2"))
    assert registry.processes[broken.process_id].status == "failed"
    assert registry.processes[broken.process_id].error == "no GPU here"
    assert broken.watcher is None and broken.process_id in supervisor.children


async def test_a_child_that_fails_to_start_is_marked_failed(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed)

    async def broken() -> Any:
        raise RuntimeError("no room")

    with pytest.raises(RuntimeError):
        await supervisor.supervise(process("x"), "personas", Policy(), broken)
    info = next(iter(registry.processes.values()))
    assert info.status == "failed" and info.error == "failed to start: no room"


async def test_a_restart_that_fails_is_tried_again_within_the_policy(registry: Registry, killed: list[Any]) -> None:
    """A replacement that cannot start (its node died too, say) counts as one more death: the next try
    follows the policy, and a child that never comes back ends failed at the policy's limit."""
    supervisor = make(registry, killed)
    calls = 0

    async def flaky() -> FakeActor:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise RuntimeError("gone")
        return FakeActor("flaky")

    policy = Policy(max_restarts=5, backoff_s=0)
    child = await supervisor.supervise(process("x"), "personas", policy, flaky)
    child.handle.die()
    await until(lambda: registry.processes[child.process_id].status == "running" and calls == 4)

    async def never() -> FakeActor:
        raise RuntimeError("gone")

    doomed = await supervisor.supervise(process("y"), "personas", Policy(max_restarts=2, backoff_s=0), flaky)
    supervisor.restart_factory = lambda child, info: never
    doomed.handle.die()
    await until(lambda: registry.processes[doomed.process_id].status == "failed")
    assert "reached the limit of 2" in (registry.processes[doomed.process_id].error or "")


async def test_at_most_n_actors_start_at_once(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed, slots=2)
    gate = asyncio.Event()
    running = 0
    most = 0

    async def slow() -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return "handle"

    starts = [asyncio.ensure_future(supervisor.spawn(slow)) for _ in range(5)]
    await settle()
    assert running == 2
    gate.set()
    assert await asyncio.gather(*starts) == ["handle"] * 5
    assert most == 2


async def test_at_least_one_actor_starts_at_a_time(registry: Registry, killed: list[Any]) -> None:
    supervisor = make(registry, killed, slots=0)

    async def quick() -> str:
        return "handle"

    assert await asyncio.wait_for(supervisor.spawn(quick), 1) == "handle"

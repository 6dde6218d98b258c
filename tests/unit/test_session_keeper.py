"""The session keeper without Ray: fake session actors that answer `warm`, `bind`, `lend`, `detach`,
`busy` and `watch` in-process, a registry with no store and a real supervisor. A caller gets a warm
actor, the cap makes room from the least recently used idle session (handing its actor on), an actor
lent for one-turn sessions makes room first and comes back to the pool when given back, a dead actor's
conversation moves to a fresh one under the same process id, and the pool follows demand."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import RayActorError

from troupe.actors import session_keeper as keeper_module
from troupe.actors.registry import Registry
from troupe.actors.session_keeper import SessionKeeper
from troupe.actors.supervisor import Supervisor
from troupe.config.settings import Settings
from troupe.core.errors import BudgetExceeded, SessionLimit
from troupe.core.persona_file import PersonaDef, load_personas

ids = itertools.count(1)


def method(fn: Any) -> SimpleNamespace:
    """An actor method: `.remote(...)` gives an awaitable, as a Ray handle's does."""

    async def call(*args: Any) -> Any:
        result = fn(*args)
        return await result if isinstance(result, Awaitable) else result

    return SimpleNamespace(remote=lambda *args: asyncio.ensure_future(call(*args)))


class FakeSession:
    """A session actor: binds one caller at a time, can be made busy (mid-turn) or killed."""

    def __init__(self) -> None:
        self.name = f"actor-{next(ids)}"
        self.bound: tuple[str, str, str] | None = None  # (caller, persona, process id)
        self.lent: str | None = None  # the lane, while lent for one-turn sessions
        self.binds: list[str] = []
        self.mid_turn = False
        self.dead: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.warm = method(lambda: None)
        self.bind = method(self._bind)
        self.lend = method(self._lend)
        self.detach = method(self._detach)
        self.busy = method(lambda: self.mid_turn)
        self.watch = SimpleNamespace(remote=lambda: asyncio.shield(self.dead))  # a watcher stopping is not a death

    def _bind(self, caller: str, persona: str, pid: str, spent: float) -> str:
        if self.dead.done():
            raise RayActorError()
        self.bound, self.lent = (caller, persona, pid), None
        self.binds.append(caller)
        return f"session-{caller}-{len(self.binds)}"

    def _lend(self, pid: str, lane: str, persona: str, spent: float) -> None:
        if self.dead.done():
            raise RayActorError()
        self.bound, self.lent = None, lane

    def _detach(self) -> dict[str, str] | None:
        if self.lent is not None:
            self.lent = None
            return None
        assert self.bound is not None
        caller, persona, _ = self.bound
        self.bound = None
        return {"caller_id": caller, "persona": persona, "session_id": f"session-{caller}"}

    def die(self) -> None:
        if not self.dead.done():
            self.dead.set_exception(RayActorError())
            self.dead.exception()


class World:
    """A keeper over fake actors, with what it made, killed and ran in the background."""

    def __init__(self, max_sessions: int = 3, pool: int = 1) -> None:
        self.made: list[FakeSession] = []
        self.killed: list[FakeSession] = []
        self.tasks: list[asyncio.Future[Any]] = []
        self.summaries: list[str] = []
        self.registry = Registry(self.background)  # no store: flushes do nothing
        self.supervisor = Supervisor(self.registry, spawn_slots=2, kill=self.kill)
        settings = Settings(max_sessions=max_sessions, session_pool_size=pool, turn_timeout_s=5)
        self.keeper = SessionKeeper(
            settings, self.registry, self.supervisor, self.make, self.persona, self.background, kill=self.kill
        )

    async def make(self) -> FakeSession:
        actor = FakeSession()
        self.made.append(actor)
        return actor

    def kill(self, actor: FakeSession) -> None:
        self.killed.append(actor)
        actor.die()

    async def persona(self, name: str) -> Any:
        def summarise(session_id: str, caller: str, source: str = "session") -> str:
            self.summaries.append(caller)
            return f"{name} spoke with {caller}"

        return SimpleNamespace(summarise_session=method(summarise))

    def background(self, coro: Awaitable[Any]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        while pending := [task for task in self.tasks if not task.done()]:
            await asyncio.gather(*pending)

    def stop(self) -> None:
        for child in self.supervisor.children.values():
            self.supervisor.unwatch(child)
        for task in self.tasks:
            task.cancel()


@pytest.fixture
def tony() -> PersonaDef:
    return load_personas().get("Tony")


@pytest.fixture(autouse=True)
def _no_refill_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keeper_module, "REFILL_DELAY_S", 0)
    monkeypatch.setattr(keeper_module, "POOL_WAIT_S", 0.2)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    made = World()
    await made.keeper.fill_pool()
    yield made
    made.stop()


async def test_a_caller_gets_a_warm_actor_and_the_pool_refills(world: World, tony: PersonaDef) -> None:
    warm = world.made[0]
    lease = await world.keeper.session_for("+15550001", tony)
    assert lease.handle is warm and warm.bound == ("+15550001", "Tony", lease.process_id)
    await world.settle()
    assert len(world.keeper.pool) == 1 and world.keeper.pool[0][1] is not warm  # a fresh one waits
    again = await world.keeper.session_for("+15550001", tony)
    assert again.handle is warm and again.session_id == lease.session_id  # the same conversation
    assert world.registry.processes[lease.process_id].status == "running"


async def test_at_the_cap_the_least_recently_used_idle_session_hands_its_actor_on(
    world: World, tony: PersonaDef
) -> None:
    leases = {}
    for caller in ("ann", "bob", "cat"):
        leases[caller] = await world.keeper.session_for(caller, tony)
        await world.settle()
    await world.keeper.session_for("ann", tony)  # ann spoke again: bob is now the least recent
    made = len(world.made)
    dan = await world.keeper.session_for("dan", tony)
    await world.settle()
    assert dan.handle is leases["bob"].handle  # bob's actor went straight to dan
    assert world.summaries == ["bob"]  # and bob's conversation was summarised into memory
    assert world.registry.processes[leases["bob"].process_id].status == "completed"
    assert world.keeper.directory.get(("bob", "tony")) is None
    assert len(world.made) == made  # no process was started for dan


async def test_when_every_session_is_mid_turn_a_new_caller_is_refused(world: World, tony: PersonaDef) -> None:
    for caller in ("ann", "bob", "cat"):
        lease = await world.keeper.session_for(caller, tony)
        lease.handle.mid_turn = True
    with pytest.raises(SessionLimit, match="mid-turn"):
        await world.keeper.session_for("dan", tony)
    assert len(world.keeper.directory) == 3 and world.keeper.directory.opening == 0


async def test_an_actor_lent_for_one_turn_sessions_goes_back_to_the_pool_when_given_back(
    world: World, tony: PersonaDef
) -> None:
    lease = await world.keeper.lend("door-1", tony)
    assert lease.handle.lent is not None
    row = world.registry.processes[lease.process_id]
    assert row.status == "running" and row.task.startswith("One-turn sessions") and row.agent == "Tony"
    assert world.keeper.directory.conversations() == []  # not a live conversation
    await world.keeper.give_back(lease.process_id)
    assert len(world.keeper.directory) == 0 and lease.handle.lent is None
    assert any(handle is lease.handle for _, handle in world.keeper.pool)
    assert world.registry.processes[lease.process_id].status == "completed"


async def test_at_the_cap_a_lent_actor_makes_room_before_any_conversation(world: World, tony: PersonaDef) -> None:
    ann = await world.keeper.session_for("ann", tony)
    lent = await world.keeper.lend("door-1", tony)
    bob = await world.keeper.session_for("bob", tony)
    await world.settle()
    made = len(world.made)
    cat = await world.keeper.session_for("cat", tony)
    await world.settle()
    assert cat.handle is lent.handle and len(world.made) == made  # the lent actor went straight to cat
    assert world.keeper.directory.get(("ann", "tony")) and world.keeper.directory.get(("bob", "tony"))
    assert world.summaries == []  # nobody's conversation was cut short
    assert ann.handle is not cat.handle and bob.handle is not cat.handle


async def test_a_dead_actor_s_conversation_moves_to_a_fresh_one_under_the_same_process(
    world: World, tony: PersonaDef
) -> None:
    lease = await world.keeper.session_for("ann", tony)
    await world.settle()
    lease.handle.die()
    for _ in range(50):
        await asyncio.sleep(0.01)
        child = world.supervisor.children[lease.process_id]
        if child.generation == 1 and child.handle is not lease.handle:
            break
    child = world.supervisor.children[lease.process_id]
    assert child.generation == 1 and child.handle.bound == ("ann", "Tony", lease.process_id)
    assert world.registry.processes[lease.process_id].restarts == 1
    after = await world.keeper.session_for("ann", tony)
    assert after.handle is child.handle and after.process_id == lease.process_id


async def test_the_door_saying_an_actor_died_replaces_it_at_once(world: World, tony: PersonaDef) -> None:
    lease = await world.keeper.session_for("ann", tony)
    await world.settle()
    replaced = await world.keeper.session_for("ann", tony, failed_generation=lease.generation)
    assert replaced.handle is not lease.handle and replaced.generation == lease.generation + 1
    assert lease.handle in world.killed
    # a second door reporting the same death does not restart it twice
    same = await world.keeper.session_for("ann", tony, failed_generation=lease.generation)
    assert same.handle is replaced.handle


async def test_a_persona_over_budget_opens_no_session(world: World, tony: PersonaDef) -> None:
    world.registry.spend["Tony"] = tony.budget_usd
    with pytest.raises(BudgetExceeded):
        await world.keeper.session_for("ann", tony)
    assert len(world.keeper.directory) == 0 and not world.keeper.directory._locks


async def test_ending_a_call_returns_its_summary_and_frees_the_caller(world: World, tony: PersonaDef) -> None:
    await world.keeper.session_for("ann", tony)
    assert await world.keeper.end("ann", tony) == "Tony spoke with ann"
    assert world.keeper.directory.get(("ann", "tony")) is None
    assert await world.keeper.end("ann", tony) is None  # nothing held any more


async def test_idle_sessions_are_let_go_and_the_pool_shrinks_to_its_floor(world: World, tony: PersonaDef) -> None:
    for caller in ("ann", "bob", "cat"):
        await world.keeper.session_for(caller, tony)
        await world.settle()
    for slot in world.keeper.directory:
        slot.last_active -= world.keeper.settings.session_idle_timeout_s + 1
    await world.keeper.release_idle()
    await world.settle()
    assert len(world.keeper.directory) == 0 and sorted(world.summaries) == ["ann", "bob", "cat"]
    world.keeper.directory._peaks.clear()  # a quiet minute later
    await world.keeper.size_pool()
    assert len(world.keeper.pool) == world.keeper.settings.session_pool_size
    alive = {id(handle) for _, handle in world.keeper.pool}
    assert all(actor in world.killed for actor in world.made if id(actor) not in alive)  # none left behind


async def test_a_refill_under_way_is_not_taken_for_a_surplus(tony: PersonaDef) -> None:
    """While the pool refills after a burst, the actors already started are not stopped as more than
    demand wants (they were, when the ones still starting were counted as well: the pool churned)."""
    world = World(max_sessions=8, pool=4)
    gate = asyncio.Event()
    make = world.make

    async def slow() -> FakeSession:
        await gate.wait()  # the refill: each start waits for the test
        return await make()

    try:
        await world.keeper.fill_pool()  # the floor of 4
        world.keeper.make_session = slow
        for caller in ("ann", "bob", "cat", "dan"):
            await world.keeper.session_for(caller, tony)  # all four warm; the refill waits at the gate
        await asyncio.sleep(0.01)
        assert world.keeper.pool_filling == 4 and not world.keeper.pool
        gate.set()
        await asyncio.sleep(0)  # some of the refill is in the pool, some still starting
        await world.keeper.size_pool()
        await asyncio.wait_for(world.settle(), 5)
        assert not [actor for actor in world.made if actor in world.killed]
        assert len(world.keeper.pool) == 4 and world.keeper.pool_filling == 0
    finally:
        world.stop()

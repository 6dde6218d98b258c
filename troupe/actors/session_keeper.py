"""The session keeper: opens a caller's session on a warm actor, restarts it when its actor dies, lets
it go (at the cap, when idle, at the end of a call) and keeps the warm pool sized to demand. The
orchestrator actor holds one; it knows nothing of the orchestrator. It is given the registry, the
supervisor, how to make a session actor and how to reach a persona (for summaries), and it talks to
session actors only through their handles (`warm`, `bind`, `detach`, `busy`, `watch`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayActorError

from troupe.actors.registry import Registry
from troupe.actors.supervisor import Child, Supervisor, kill_actor
from troupe.config.settings import Settings
from troupe.core.errors import BudgetExceeded, SessionLimit
from troupe.core.messages import ProcessInfo, new_process_id
from troupe.core.persona_file import PersonaDef
from troupe.core.sessions import Key, SessionDirectory, SessionSlot
from troupe.core.supervision import Policy, decide

log = logging.getLogger(__name__)

SESSION_POLICY = Policy(strategy="restart", max_restarts=5, window_s=60)
POOL_WAIT_S = 2.0  # how long a caller may wait for a starting actor rather than start another
REFILL_DELAY_S = 1.0  # a new actor process costs about a core-second: the callers' first turns go first
BIND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SessionLease:
    """What the door needs to talk to a caller's session directly (the orchestrator stays off the
    hot path once a session exists)."""

    handle: Any
    process_id: str
    session_id: str
    generation: int


class SessionKeeper:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        supervisor: Supervisor,
        make_session: Callable[[], Awaitable[Any]],
        persona_handle: Callable[[str], Awaitable[Any]],
        background: Callable[[Awaitable[Any]], None],
        kill: Callable[[Any], None] = kill_actor,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.supervisor = supervisor
        self.make_session = make_session
        self.persona_handle = persona_handle
        self.background = background
        self.kill = kill
        self.directory = SessionDirectory(settings.max_sessions, settings.session_pool_size)
        self.pool: deque[tuple[str, Any]] = deque()  # warm, unbound session actors: (process id, handle)
        self.pool_filling = 0
        self.pool_returned = asyncio.Event()  # an actor joined the pool
        self.capacity = asyncio.Lock()  # one caller at a time decides who makes room
        self.pacing = asyncio.Semaphore(1)  # refills start one actor at a time: a core stays with the callers

    # ------------------------------------------------------------------ opening a session

    async def session_for(
        self,
        caller_id: str,
        definition: PersonaDef,
        failed_generation: int | None = None,
    ) -> SessionLease:
        """The caller's live session with this persona, else a new one on a warm actor (which picks the
        conversation up from the store). `failed_generation`: the door saw that actor die; it is replaced
        at once."""
        key = (caller_id, definition.key)
        try:
            async with self.directory.lock(key):
                slot = self.directory.get(key)
                if slot is not None:
                    child = self.supervisor.children[slot.process_id]
                    if failed_generation is not None and failed_generation == child.generation:
                        await self._restart(child, slot, key)
                    self.directory.touch(key)
                    return SessionLease(child.handle, slot.process_id, slot.session_id, child.generation)
                async with self._room_for(definition):
                    return await self._open(key, caller_id, definition.name)
        finally:
            self.directory.settle(key)

    @contextlib.asynccontextmanager
    async def _room_for(self, definition: PersonaDef) -> AsyncIterator[None]:
        """Room for one more session of this persona, held while its actor is bound: its budget is not
        spent, and at the cap another session makes room (or the caller is refused)."""
        budget = definition.budget_usd
        if self.registry.spend.get(definition.name, 0.0) >= budget:
            raise BudgetExceeded(f"{definition.name} has used the whole ${budget:.2f} budget.")
        async with self.capacity:
            if self.directory.full:
                await self._make_room()
            self.directory.reserve()
        try:
            yield
        finally:
            self.directory.unreserve()

    async def lend(self, door: str, definition: PersonaDef) -> SessionLease:
        """An actor lent to a door for one-turn sessions of this persona (callers with no identity), one
        after another: the door opens and closes each on the actor itself, so the orchestrator is off the
        path of every such turn. It counts as a live session; it is let go, as one is, when no turn was
        reported for the idle time or when a caller needs the room, and the door then asks for another."""
        async with self._room_for(definition):
            pid, handle = await self._take_actor()
            lane = f"one-turn@{door}#{pid}"
            try:
                spent = self.registry.spend.get(definition.name, 0.0)
                await asyncio.wait_for(handle.lend.remote(pid, lane, definition.name, spent), BIND_TIMEOUT_S)
            except Exception:
                self.kill(handle)
                self.registry.set_status(pid, "failed", "could not be lent for one-turn sessions")
                raise
            slot = SessionSlot(lane, definition.name, pid, "", time.monotonic(), definition.key, lent=True)
            child = self._hold(slot.key, slot, handle)
            return SessionLease(handle, pid, "", child.generation)

    async def _open(self, key: Key, caller_id: str, persona: str) -> SessionLease:
        pid, handle = await self._take_actor()
        spent = self.registry.spend.get(persona, 0.0)
        try:
            session_id = await asyncio.wait_for(handle.bind.remote(caller_id, persona, pid, spent), BIND_TIMEOUT_S)
        except Exception:
            self.kill(handle)
            self.registry.set_status(pid, "failed", "could not take on a caller")
            raise
        slot = SessionSlot(caller_id, persona, pid, session_id, time.monotonic(), key[1])
        child = self._hold(key, slot, handle)
        self.registry.emit("session.started", caller_id=caller_id, agent=persona, process=pid)
        return SessionLease(handle, pid, session_id, child.generation)

    def _hold(self, key: Key, slot: SessionSlot, handle: Any) -> Child:
        """The actor holds the slot's conversation: its registry row says so and runs, the directory
        has the slot, and the supervisor watches the actor."""
        if slot.lent:
            name, task = f"{key[1]}-one-turn", "One-turn sessions, one after another"
        else:
            name, task = f"{key[1]}-{slot.caller_id}", f"Conversation with {slot.caller_id}"
        self.registry.update(slot.process_id, agent=slot.persona, name=name, task=task)
        self.registry.set_status(slot.process_id, "running")
        self.directory.add(key, slot)
        child = Child(process_id=slot.process_id, group="sessions", policy=SESSION_POLICY,
                      factory=self.make_session, handle=handle)  # fmt: skip
        self.supervisor.children[slot.process_id] = child
        self._watch(child, slot)
        return child

    async def _make_room(self) -> None:
        """At the cap: the least recently used session that is not mid-turn is let go (its summary is
        written in the background). Only when every session is mid-turn is the new caller refused."""
        for slot in self.directory.eviction_order():
            child = self.supervisor.children.get(slot.process_id)
            if child is None:
                continue
            try:
                busy = await asyncio.wait_for(child.handle.busy.remote(), 2)
            except Exception:
                busy = False  # dead or stuck: it makes room all the same
            if busy or self.directory.get(slot.key) is not slot:
                continue
            # its actor goes straight to the caller who needs the room: no process is stopped or started
            await self._release(slot, summarise=True, hand_on=True)
            if not self.directory.full:
                return
        raise SessionLimit(
            f"At capacity: all {len(self.directory)} sessions are mid-turn (TROUPE_MAX_SESSIONS="
            f"{self.settings.max_sessions}). Try again in a few seconds."
        )

    def adopt(self, handle: Any, holds: dict[str, Any] | None, definition: PersonaDef | None) -> str:
        """A restarted orchestrator takes back a session actor that outlived the old one's process:
        a free actor joins the pool; a bound one keeps its conversation (and its process id, so the
        registry row it had is running again). Returns what became of it: "pooled", "kept" or "stopped"
        (a second actor for a conversation another one holds, or a persona no longer known)."""
        if holds is None:
            self._pooled(handle)
            return "pooled"
        key = (holds["caller_id"], definition.key) if definition is not None else None
        if key is None or self.directory.get(key) is not None:
            self.kill(handle)
            return "stopped"
        pid: str = holds["process_id"]
        if pid not in self.registry.processes:  # a row older than those the registry reloaded
            self.registry.register(ProcessInfo(id=pid, kind="session", agent=holds["persona"], name="", task=""))
        slot = SessionSlot(key[0], holds["persona"], pid, holds["session_id"], time.monotonic(), key[1],
                           lent=holds.get("lent", False))  # fmt: skip
        self._hold(key, slot, handle)
        self.registry.emit("session.recovered", caller_id=key[0], agent=holds["persona"], process=pid)
        return "kept"

    # ------------------------------------------------------------------ actors dying

    def _watch(self, child: Child, slot: SessionSlot) -> None:
        async def on_death(generation: int) -> None:
            async with self.directory.lock(slot.key):
                if child.generation == generation and self.directory.get(slot.key) is slot:
                    if slot.lent:  # no conversation to come back to: a turn in flight is kept by the door
                        self.directory.remove(slot.key, slot)
                        self.supervisor.children.pop(child.process_id, None)
                        self.registry.set_status(child.process_id, "failed", "died (lent for one-turn sessions)")
                    else:
                        await self._restart(child, slot, slot.key)
            self.directory.settle(slot.key)

        self.supervisor.watch(child, on_death)

    async def _restart(self, child: Child, slot: SessionSlot, key: Key) -> None:
        """A session actor died: a fresh actor takes over and reloads the transcript from the store."""
        self.registry.last_death_at = time.monotonic()  # its node may be gone: new actors go near for a while
        decision = decide(child.policy, child.restart_times, time.monotonic())
        if decision.action != "restart":
            self.registry.set_status(child.process_id, "failed", f"session died; {decision.reason}")
            self.directory.remove(key, slot)
            self.supervisor.children.pop(child.process_id, None)
            return
        child.generation += 1
        child.restart_times.append(time.monotonic())
        self.kill(child.handle)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        handle = None
        for _ in range(3):  # a pooled actor, or the one made for the pool, may have died with the same node
            try:
                pool_pid, handle = await self._take_actor()
                self.registry.set_status(pool_pid, "completed")  # its identity merges into the restarted one
                self.registry.forget(pool_pid)
                await handle.bind.remote(
                    slot.caller_id, slot.persona, child.process_id, self.registry.spend.get(slot.persona, 0.0)
                )
                break
            except RayActorError:
                if handle is not None:
                    self.kill(handle)
                handle = None
        if handle is None:  # the caller's next turn takes a fresh session from the store
            self.registry.set_status(child.process_id, "failed", "session died; no actor took it over")
            self.directory.remove(key, slot)
            self.supervisor.children.pop(child.process_id, None)
            return
        child.handle = handle
        restarts = self.registry.processes[child.process_id].restarts + 1
        self.registry.update(child.process_id, restarts=restarts)
        self.registry.set_status(child.process_id, "running")
        self.registry.emit("process.restarted", process=child.process_id, agent=slot.persona, restarts=restarts)
        self._watch(child, slot)

    # ------------------------------------------------------------------ letting sessions go

    def touch(self, process_id: str) -> None:
        """A session reported work: it is not idle."""
        for slot in self.directory:
            if slot.process_id == process_id:
                slot.last_active = time.monotonic()

    async def give_back(self, process_id: str) -> None:
        """A door gives back an actor lent to it that it has not used for a while."""
        for slot in self.directory:
            if slot.lent and slot.process_id == process_id:
                await self._release(slot, summarise=False)
                return

    async def end(self, caller_id: str, definition: PersonaDef, source: str = "session") -> str | None:
        """The platform says the conversation is over: let it go now, and return its summary (None when
        troupe held no session for it)."""
        key = (caller_id, definition.key)
        async with self.directory.lock(key):
            slot = self.directory.get(key)
            held = await self._release(slot, summarise=False) if slot is not None else None
        self.directory.settle(key)
        if held is None:
            return None
        return await self._summarise(held, source)

    async def let_go_of(self, caller_id: str) -> int:
        """A person asked to be forgotten: every live session of theirs ends now, with no summary written
        (their data is about to be deleted); returns how many there were."""
        slots = [slot for slot in list(self.directory) if slot.caller_id == caller_id]
        for slot in slots:
            async with self.directory.lock(slot.key):
                if self.directory.get(slot.key) is slot:
                    await self._release(slot, summarise=False)
            self.directory.settle(slot.key)
        return len(slots)

    async def release_idle(self) -> None:
        for slot in self.directory.idle(self.settings.session_idle_timeout_s):
            async with self.directory.lock(slot.key):
                if self.directory.get(slot.key) is slot:
                    await self._release(slot, summarise=True)
            self.directory.settle(slot.key)

    async def _release(
        self, slot: SessionSlot, *, summarise: bool, detached: bool = False, hand_on: bool = False
    ) -> dict[str, str] | None:
        """Let a conversation go: the actor settles it and returns to the pool (or stops). With
        `summarise` the persona writes its summary into memory in the background, off every caller's
        path. `detached`: the actor has unbound itself already (a one-turn session). `hand_on`: the actor
        is the next one taken from the pool."""
        self.directory.remove(slot.key, slot)
        child = self.supervisor.children.pop(slot.process_id, None)
        if child is None:
            return None
        self.supervisor.unwatch(child)
        held: dict[str, str] | None = None
        try:
            if not detached:
                held = await asyncio.wait_for(child.handle.detach.remote(), self.settings.turn_timeout_s)
            recycled = hand_on or self.directory.pool_surplus(len(self.pool) + 1) == 0
        except Exception:
            log.warning("session %s could not be released cleanly", slot.process_id, exc_info=True)
            recycled = False
        self.registry.set_status(slot.process_id, "completed")
        self.registry.emit("session.ended", caller_id=slot.caller_id, agent=slot.persona, process=slot.process_id)
        if recycled:
            self._pooled(child.handle, first=hand_on)
        else:
            self.kill(child.handle)
        if summarise and held is not None:
            self.background(self._summarise(held))
        return held

    async def _summarise(self, held: dict[str, str], source: str = "session") -> str:
        """The persona summarises a conversation it let go into its memory of the caller, and ends it."""
        try:
            handle = await self.persona_handle(held["persona"])
            summary: str = await handle.summarise_session.remote(held["session_id"], held["caller_id"], source)
            return summary
        except Exception:
            log.warning("the session %s could not be summarised", held["session_id"], exc_info=True)
            return ""

    async def shutdown(self) -> None:
        """Let every conversation go and stop the pool (the service is going away)."""
        for slot in list(self.directory):
            await self._release(slot, summarise=False)
        while self.pool:
            pid, handle = self.pool.popleft()
            self.kill(handle)
            self.registry.set_status(pid, "completed")

    # ------------------------------------------------------------------ the warm pool

    async def fill_pool(self, size: int | None = None, paced: bool = False) -> None:
        """Start free actors up to what demand wants (or up to `size` free). `paced`: one at a time (a
        refill while callers are being served; at start-up the pool fills as fast as the cores allow)."""
        free = len(self.pool) + self.pool_filling
        want = self.directory.pool_target(free) if size is None else size - free
        if want <= 0:
            return
        self.pool_filling += want  # each actor counts as free from now on, and as starting until it is
        await asyncio.gather(*(self._add_to_pool(paced) for _ in range(want)))

    async def size_pool(self) -> None:
        """Grow the pool ahead of a burst; shrink it back to its floor when callers stop coming."""
        for _ in range(min(len(self.pool), self.directory.pool_surplus(len(self.pool) + self.pool_filling))):
            pid, handle = self.pool.pop()
            self.kill(handle)
            self.registry.set_status(pid, "completed")
        if self.directory.pool_target(len(self.pool) + self.pool_filling):
            self.background(self.fill_pool(paced=True))

    async def _refill_later(self) -> None:
        await asyncio.sleep(REFILL_DELAY_S)
        await self.fill_pool(paced=True)

    def _register_free(self, name: str, task: str) -> str:
        return self.registry.register(
            ProcessInfo(id=new_process_id(), kind="session", agent="pool", name=name, task=task)
        )

    def _pooled(self, handle: Any, pid: str | None = None, first: bool = False) -> None:
        """An actor joins the warm pool (a fresh one, or one whose conversation was let go); `first`: it
        is the next one taken."""
        pid = pid or self._register_free("warm-session", "Waiting for a caller")
        if first:
            self.pool.appendleft((pid, handle))
        else:
            self.pool.append((pid, handle))
        self.pool_returned.set()

    async def _wait_for_pool(self, within: float) -> None:
        deadline = time.monotonic() + within
        while not self.pool and (left := deadline - time.monotonic()) > 0:
            self.pool_returned.clear()
            try:
                await asyncio.wait_for(self.pool_returned.wait(), left)
            except TimeoutError:
                return

    async def _add_to_pool(self, paced: bool = False) -> None:
        """Start one free actor (`pool_filling` counted it when it was asked for)."""
        pid = self._register_free("warm-session", "Waiting for a caller")
        try:
            async with self.pacing if paced else contextlib.nullcontext():
                handle = await self.supervisor.spawn(self.make_session)
        except Exception as exc:
            self.registry.set_status(pid, "failed", f"failed to start: {exc}")
            return
        finally:
            self.pool_filling -= 1
        self._pooled(handle, pid)  # pending: a process waiting for a caller

    async def _take_actor(self) -> tuple[str, Any]:
        if not self.pool and self.pool_filling:
            # actors are starting already: waiting for one costs less than starting yet another process
            # (a core-second of a 2-core machine)
            await self._wait_for_pool(POOL_WAIT_S)
        if self.pool:
            pid, handle = self.pool.popleft()
            self.background(self._refill_later())
            return pid, handle
        # pool empty (or disabled): a cold start, which the warm pool exists to avoid. Callers' starts
        # take turns with the cores (a burst's all at once would each finish as late as the last), and
        # the pool is refilled once they are served
        pid = self._register_free("cold-session", "Starting for a caller")
        handle = await self.supervisor.spawn(self.make_session)
        self.background(self._refill_later())
        return pid, handle

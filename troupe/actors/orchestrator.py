"""The orchestrator actor: registry of every process, supervisor of every actor, and the map from
callers to their session actors (taken from a warm pool so no caller waits for a process to start)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import ray
from ray.exceptions import RayActorError

from troupe.actors.life_loop import LifeLoopActor
from troupe.actors.local_model import LocalModel
from troupe.actors.messages import (
    MetricsDelta,
    ProcessInfo,
    ProcessKind,
    ProcessStatus,
    SessionInfo,
    new_process_id,
)
from troupe.actors.models import LOCAL_MODEL_ACTOR
from troupe.actors.persona import PersonaActor
from troupe.actors.persona_file import PersonaCatalog
from troupe.actors.registry import Registry, restarts_by_kind
from troupe.actors.session import SessionActor
from troupe.actors.sessions import SessionDirectory, SessionSlot
from troupe.actors.supervision import Policy, decide
from troupe.actors.supervisor import Child, Supervisor, kill_actor
from troupe.actors.task import TaskActor
from troupe.chat_model import ToolCall
from troupe.config.settings import Settings
from troupe.errors import BudgetExceeded, PersonaNotFound, SessionLimit
from troupe.store import Store

log = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "orchestrator"
SESSION_POLICY = Policy(strategy="restart", max_restarts=5, window_s=60)
POOL_WAIT_S = 2.0  # how long a caller may wait for an actor a one-turn session is handing back


@dataclass(frozen=True)
class SessionLease:
    """What the door needs to talk to a caller's session directly (the orchestrator stays off the
    hot path once a session exists)."""

    handle: Any
    process_id: str
    session_id: str
    generation: int


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class Orchestrator:
    def __init__(self, settings: Settings, catalog: PersonaCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.started = time.time()
        self.store: Store | None = None
        self.registry = Registry(self._background)  # process rows, events and spend
        self.sessions = SessionDirectory(settings.max_sessions, settings.session_pool_size)
        self.capacity = asyncio.Lock()
        self.pool_returned = asyncio.Event()  # an actor joined the pool
        self.pool: deque[tuple[str, Any]] = deque()  # warm, unbound session actors: (process id, handle)
        self.pool_filling = 0
        self.own_id: str | None = None  # this orchestrator's own row in the registry
        self.persona_ids: dict[str, str] = {}
        self.life_ids: dict[str, str] = {}
        self.life_counts: Counter[tuple[str, str, str]] = Counter()  # (persona, activity, status) since start
        self.life_seconds: dict[tuple[str, str], float] = {}
        self.ready = False
        self.timings: dict[str, float] = {}  # start-up phases, seconds (troupe serve --verbose prints them)
        self.supervisor = Supervisor(  # the supervised children, watched and restarted
            self.registry,
            spawn_slots=int(ray.available_resources().get("CPU", 2)),
            restart_factory=self._restart_factory,
            failure_of=self._failure_of,
        )
        self.life_loops_up = asyncio.Event()
        self.callers_served = asyncio.Event()  # personas are up: callers can be served
        self.rest_begun = False
        self.model_failure: str | None = None  # why the offline model cannot run, when it cannot
        self.me: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting = asyncio.Lock()
        if ray.get_runtime_context().was_current_actor_reconstructed:
            # Ray restarted this orchestrator after its process died (and its children with it): start
            # again from the store, as on a cold start, so callers are served again within seconds
            self._background(self._recover())

    async def _recover(self) -> None:
        # the named children of the process that died may hold their names a moment longer: free them
        names = [LOCAL_MODEL_ACTOR] + [
            f"{kind}-{p.key}" for p in self.catalog.executives() for kind in ("persona", "life")
        ]
        for name in names:
            try:
                kill_actor(ray.get_actor(name, namespace=self.settings.namespace))
            except ValueError:
                pass
        try:
            await self.start(defer_rest=True)  # callers first; life loops and the pool right behind
            await self.start_rest()
            log.warning("the orchestrator restarted and recovered its actors from the store")
        except Exception:
            log.exception("the orchestrator restarted but could not recover")

    # ------------------------------------------------------------------ start-up and shutdown

    async def start(self, defer_rest: bool = False) -> dict[str, Any]:
        """Open the store (running migrations), rebuild the registry and start what callers need: the
        personas and the offline model. Life loops and the warm pool follow in the background (after
        `start_rest()` when `defer_rest`: `troupe serve` opens its door first), so the door opens as soon
        as a caller can be answered. Returns the status, with start-up timings."""
        async with self._starting:
            if self.ready:
                return await self.status()
            return await self._start(defer_rest)

    async def _start(self, defer_rest: bool) -> dict[str, Any]:
        began = time.perf_counter()
        self.me = ray.get_runtime_context().current_actor
        self.store = await Store.open(self.settings.resolved_database_url, migrate=True)
        self.registry.store = self.store
        await self.registry.rebuild()
        self.timings["store"] = time.perf_counter() - began
        self.own_id = self.registry.register(
            ProcessInfo(
                id=new_process_id(),
                kind="orchestrator",
                agent="troupe",
                name="orchestrator",
                task="Supervise every process",
                status="running",
            )
        )
        first: list[Awaitable[Any]] = []
        if self.settings.effective_backend == "local":
            first.append(self._timed("model", self._supervise(
                "local_model", "model", "troupe", LOCAL_MODEL_ACTOR, "Serve the offline model", SESSION_POLICY,
                self._make_local_model,
            )))  # fmt: skip
        first += [
            self._supervise(
                "persona", "personas", persona.name, f"{persona.key}-main", "Persona agent",
                self._policy(persona.name), partial(self._make_persona, persona.name),
            )
            for persona in self.catalog.executives()
        ]  # fmt: skip
        phase = time.perf_counter()
        await asyncio.gather(*first)
        self.timings["personas"] = time.perf_counter() - phase
        if not defer_rest:
            self.rest_begun = True
            await self._start_rest()
        self._background(self._housekeeping())
        await self.registry.flush()  # the registry is in the store from the start: a restart finds what it lost
        self.ready = True
        self.callers_served.set()
        self.timings["orchestrator"] = time.perf_counter() - began
        return await self.status()

    async def start_rest(self) -> None:
        """Start the life loops and fill the warm pool, in the background (once)."""
        if not self.rest_begun:
            self.rest_begun = True
            self._background(self._start_rest())

    async def _timed(self, label: str, work: Awaitable[Any]) -> Any:
        began = time.perf_counter()
        try:
            return await work
        finally:
            self.timings[label] = time.perf_counter() - began

    async def _start_rest(self) -> None:
        """After the door opens: one warm session first (the first caller's), then the life loops, then
        the rest of the pool."""
        began = time.perf_counter()
        try:
            await self._fill_pool(min(1, self.settings.session_pool_size))
            await asyncio.gather(*(
                self._supervise(
                    "life_loop", "life", persona.name, f"{persona.key}-life", "Life loop",
                    self._policy(persona.name), partial(self._make_life_loop, persona.name),
                )
                for persona in self.catalog.executives()
            ))  # fmt: skip
        except Exception:
            log.exception("a life loop failed to start")
        finally:
            self.life_loops_up.set()
            self.timings["life_loops"] = time.perf_counter() - began
        await self._fill_pool()
        self.timings["pool"] = time.perf_counter() - began

    def _policy(self, name: str) -> Policy:
        spec = self.catalog.get(name).supervision
        return Policy(
            strategy=spec.strategy,
            max_restarts=spec.max_restarts,
            window_s=spec.window_s,
            backoff_s=self.settings.restart_backoff_s,
            backoff_max_s=self.settings.restart_backoff_max_s,
        )

    async def shutdown(self) -> None:
        """Stop every child and flush the registry (the service is going away)."""
        for child in list(self.supervisor.children.values()):
            self.supervisor.unwatch(child)
        for slot in list(self.sessions):
            await self._release(slot, summarise=False)
        for child in list(self.supervisor.children.values()):
            kill_actor(child.handle)
            self.registry.set_status(child.process_id, "completed")
        while self.pool:
            pid, handle = self.pool.popleft()
            kill_actor(handle)
            self.registry.set_status(pid, "completed")
        if self.own_id is not None:
            self.registry.set_status(self.own_id, "completed")  # a clean stop, not an interruption
        await self.registry.flush()
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ actor factories

    async def _make_local_model(self, after_crash: bool = False) -> Any:
        handle = await self._named(LocalModel, LOCAL_MODEL_ACTOR, self.settings)
        try:
            state = await handle.start.remote(probe_first=after_crash)
        except RayActorError:
            if after_crash:
                raise
            # it died loading or on its first token: once more, with a probe that names the cause
            kill_actor(handle)
            return await self._make_local_model(after_crash=True)
        self.model_failure = state.reason if state.status == "failed" else None
        return handle

    async def _named(self, cls: Any, name: str, *args: Any) -> Any:
        """Create a named actor. Right after a kill, Ray may still hold the name for a moment."""
        for _ in range(100):
            try:
                return cls.options(name=name, namespace=self.settings.namespace).remote(*args)
            except ValueError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"actor name {name!r} stayed taken")

    async def _make_persona(self, name: str) -> Any:
        persona = self.catalog.get(name)
        handle = await self._named(
            PersonaActor,
            f"persona-{persona.key}",
            self.settings,
            self.catalog,
            persona.name,
            self.persona_ids[persona.key],
            self.me,
        )
        await handle.start.remote(self.registry.spend.get(persona.name, 0.0))
        return handle

    async def _make_life_loop(self, name: str) -> Any:
        persona = self.catalog.get(name)
        handle = await self._named(
            LifeLoopActor,
            f"life-{persona.key}",
            self.settings,
            self.catalog,
            persona.name,
            self.life_ids[persona.key],
            self.me,
        )
        await handle.start.remote()
        return handle

    async def _make_session(self) -> Any:
        handle = SessionActor.remote(self.settings, self.catalog, self.me)  # type: ignore[attr-defined]
        await handle.warm.remote()
        return handle

    # ------------------------------------------------------------------ registry

    async def report(
        self,
        process_id: str,
        delta: MetricsDelta,
        status: ProcessStatus | None = None,
        error: str | None = None,
    ) -> float:
        """A process reports the work it did. Returns its persona's total spend, for budget checks."""
        info = self.registry.report(process_id, delta, status, error)
        if info is None:
            return 0.0
        if info.kind == "session":
            for slot in self.sessions:
                if slot.process_id == process_id:
                    slot.last_active = time.monotonic()
        return self.registry.spend.get(info.agent, 0.0)

    # ------------------------------------------------------------------ supervision

    async def _supervise(
        self,
        kind: ProcessKind,
        group: str,
        agent: str,
        name: str,
        task: str,
        policy: Policy,
        factory: Callable[[], Awaitable[Any]],
    ) -> str:
        info = ProcessInfo(id=new_process_id(), kind=kind, agent=agent, name=name, task=task)
        if kind == "persona":
            self.persona_ids[self.catalog.get(agent).key] = info.id
        if kind == "life_loop":
            self.life_ids[self.catalog.get(agent).key] = info.id
        await self.supervisor.supervise(info, group, policy, factory)
        return info.id

    def _restart_factory(self, child: Child, info: ProcessInfo) -> Callable[[], Awaitable[Any]]:
        """How a child that died is created again: the offline model probes first, to name the cause."""
        if info.kind == "local_model":
            return partial(self._make_local_model, after_crash=True)
        return child.factory

    def _failure_of(self, info: ProcessInfo) -> str | None:
        """Why a freshly started child cannot run here (only the offline model can say so)."""
        return self.model_failure if info.kind == "local_model" else None

    # ------------------------------------------------------------------ sessions and the warm pool

    async def _fill_pool(self, size: int | None = None) -> None:
        free = len(self.pool) + self.pool_filling
        want = self.sessions.pool_target(free) if size is None else size - free
        if want <= 0:
            return
        self.pool_filling += want
        try:
            await asyncio.gather(*(self._add_to_pool() for _ in range(want)))
        finally:
            self.pool_filling -= want

    async def _refill_later(self) -> None:
        # a new actor process costs about a core-second; let the caller's first turn have the CPU first
        await asyncio.sleep(0.5)
        await self._fill_pool()

    def _pooled(self, handle: Any, pid: str | None = None, first: bool = False) -> None:
        """An actor joins the warm pool (a fresh one, or one whose conversation was let go); `first`: it
        is the next one taken."""
        pid = pid or self.registry.register(
            ProcessInfo(id=new_process_id(), kind="session", agent="pool", name="warm-session",
                        task="Waiting for a caller")
        )  # fmt: skip
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

    async def _add_to_pool(self) -> None:
        pid = self.registry.register(
            ProcessInfo(
                id=new_process_id(),
                kind="session",
                agent="pool",
                name="warm-session",
                task="Waiting for a caller",
            )
        )
        try:
            handle = await self.supervisor.spawn(self._make_session)
        except Exception as exc:
            self.registry.set_status(pid, "failed", f"failed to start: {exc}")
            return
        self._pooled(handle, pid)  # pending: a process waiting for a caller

    async def _take_session_actor(self) -> tuple[str, Any]:
        if not self.pool and any(slot.one_turn for slot in self.sessions):
            # one-turn sessions hand their actors back within moments of their turn: waiting for one
            # costs milliseconds, a new process seconds (and a core-second of a 2-core machine)
            await self._wait_for_pool(POOL_WAIT_S)
        if self.pool:
            pid, handle = self.pool.popleft()
            self._background(self._refill_later())
            return pid, handle
        # pool empty (or disabled): a cold start, which the warm pool exists to avoid
        pid = self.registry.register(
            ProcessInfo(
                id=new_process_id(),
                kind="session",
                agent="pool",
                name="cold-session",
                task="Starting for a caller",
            )
        )
        handle = await self._make_session()
        self._background(self._fill_pool())
        return pid, handle

    async def session_for(
        self, caller_id: str, persona: str, failed_generation: int | None = None, one_turn: bool = False
    ) -> SessionLease:
        """The session actor for this caller and persona: theirs if it is live, else one from the pool,
        which picks the conversation up from the store. `failed_generation` says the door saw that actor
        die; it is replaced at once. `one_turn`: a caller with no identity, released after its turn."""
        definition = self.catalog.find(persona)
        if definition is None:
            raise PersonaNotFound(
                f"Unknown persona {persona!r}. Known: {', '.join(self.catalog.names())}", param="model"
            )
        if not self.callers_served.is_set():
            # the door opens while troupe is still starting: a caller this early waits for the personas
            await asyncio.wait_for(self.callers_served.wait(), 120)
        key = (caller_id, definition.key)
        try:
            async with self.sessions.lock(key):
                slot = self.sessions.get(key)
                if slot is not None:
                    child = self.supervisor.children[slot.process_id]
                    if failed_generation is not None and failed_generation == child.generation:
                        await self._restart_session(child, slot)
                    self.sessions.touch(key)
                    return SessionLease(child.handle, slot.process_id, slot.session_id, child.generation)
                budget = definition.budget_usd
                if self.registry.spend.get(definition.name, 0.0) >= budget:
                    raise BudgetExceeded(f"{definition.name} has used the whole ${budget:.2f} budget.")
                async with self.capacity:  # one caller at a time decides who makes room
                    if self.sessions.full:
                        await self._make_room()
                    self.sessions.reserve()
                try:
                    return await self._open_session(key, caller_id, definition.name, one_turn)
                finally:
                    self.sessions.unreserve()
        finally:
            self.sessions.settle(key)

    async def _open_session(self, key: tuple[str, str], caller_id: str, persona: str, one_turn: bool) -> SessionLease:
        pid, handle = await self._take_session_actor()
        spent = self.registry.spend.get(persona, 0.0)
        try:
            session_id = await asyncio.wait_for(handle.bind.remote(caller_id, persona, pid, spent, one_turn), 30)
        except Exception:
            kill_actor(handle)
            self.registry.set_status(pid, "failed", "could not take on a caller")
            raise
        label = "one turn" if one_turn else "conversation"
        self.registry.update(
            pid, agent=persona, name=f"{key[1]}-{caller_id}", task=f"{label.capitalize()} with {caller_id}"
        )
        self.registry.set_status(pid, "running")
        slot = SessionSlot(caller_id, persona, pid, session_id, time.monotonic(), one_turn)
        self.sessions.add(key, slot)
        child = Child(process_id=pid, group="sessions", policy=SESSION_POLICY, factory=self._make_session,
                      handle=handle)  # fmt: skip
        self.supervisor.children[pid] = child
        self._watch_session(child, slot)
        self.registry.emit("session.started", caller_id=caller_id, agent=persona, process=pid)
        return SessionLease(handle, pid, session_id, child.generation)

    async def _make_room(self) -> None:
        """At the cap: the least recently used session that is not mid-turn is let go (its summary is
        written in the background). Only when every session is mid-turn is the new caller refused."""
        for slot in self.sessions.eviction_order():
            child = self.supervisor.children.get(slot.process_id)
            if child is None:
                continue
            try:
                busy = await asyncio.wait_for(child.handle.busy.remote(), 2)
            except Exception:
                busy = False  # dead or stuck: it makes room all the same
            if busy or self.sessions.get(self._key(slot)) is not slot:
                continue
            # its actor goes straight to the caller who needs the room: no process is stopped or started
            await self._release(slot, summarise=True, hand_on=True)
            if not self.sessions.full:
                return
        raise SessionLimit(
            f"At capacity: all {len(self.sessions)} sessions are mid-turn (TROUPE_MAX_SESSIONS="
            f"{self.settings.max_sessions}). Try again in a few seconds."
        )

    async def turn_over(self, process_id: str, session_id: str) -> None:
        """A one-turn session has stored its turn: its actor goes back to the pool."""
        for slot in self.sessions:
            if slot.process_id == process_id and slot.session_id == session_id:
                await self._release(slot, summarise=False, detached=True)
                return

    def _watch_session(self, child: Child, slot: SessionSlot) -> None:
        async def on_death(generation: int) -> None:
            key = self._key(slot)
            async with self.sessions.lock(key):
                if child.generation == generation and self.sessions.get(key) is slot:
                    if slot.one_turn:  # nothing to come back to: its turn is kept by the door
                        self.sessions.remove(key, slot)
                        self.supervisor.children.pop(child.process_id, None)
                        self.registry.set_status(child.process_id, "failed", "died during its one turn")
                    else:
                        await self._restart_session(child, slot)
            self.sessions.settle(key)

        self.supervisor.watch(child, on_death)

    def _key(self, slot: SessionSlot) -> tuple[str, str]:
        return (slot.caller_id, self.catalog.get(slot.persona).key)

    async def _restart_session(self, child: Child, slot: SessionSlot) -> None:
        """A session actor died: a fresh actor takes over and reloads the transcript from the store."""
        decision = decide(child.policy, child.restart_times, time.monotonic())
        if decision.action != "restart":
            self.registry.set_status(child.process_id, "failed", f"session died; {decision.reason}")
            self.sessions.remove(self._key(slot), slot)
            self.supervisor.children.pop(child.process_id, None)
            return
        child.generation += 1
        child.restart_times.append(time.monotonic())
        kill_actor(child.handle)
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        _pool_pid, handle = await self._take_session_actor()
        self.registry.set_status(_pool_pid, "completed")  # its process identity is merged into the restarted one
        self.registry.forget(_pool_pid)
        await handle.bind.remote(
            slot.caller_id, slot.persona, child.process_id, self.registry.spend.get(slot.persona, 0.0)
        )
        child.handle = handle
        info = self.registry.processes[child.process_id]
        self.registry.update(child.process_id, restarts=info.restarts + 1)
        self.registry.set_status(child.process_id, "running")
        self.registry.emit(
            "process.restarted", process=child.process_id, agent=slot.persona, restarts=info.restarts + 1
        )
        self._watch_session(child, slot)

    async def end_session(self, caller_id: str, persona: str) -> str | None:
        """The platform says the conversation is over: let it go now, and return its summary."""
        definition = self.catalog.get(persona)
        key = (caller_id, definition.key)
        async with self.sessions.lock(key):
            slot = self.sessions.get(key)
            held = await self._release(slot, summarise=False) if slot is not None else None
        self.sessions.settle(key)
        if held is None:
            return None
        return await self._summarise(held)

    async def _release(
        self, slot: SessionSlot, *, summarise: bool, detached: bool = False, hand_on: bool = False
    ) -> dict[str, str] | None:
        """Let a conversation go: the actor settles it and returns to the pool (or stops). With
        `summarise` the persona writes its summary into memory in the background, off every caller's
        path. `detached`: the actor has unbound itself already (a one-turn session)."""
        self.sessions.remove(self._key(slot), slot)
        child = self.supervisor.children.pop(slot.process_id, None)
        if child is None:
            return None
        self.supervisor.unwatch(child)
        held: dict[str, str] | None = None
        try:
            if not detached:
                held = await asyncio.wait_for(child.handle.detach.remote(), self.settings.turn_timeout_s)
            recycled = hand_on or self.sessions.pool_surplus(len(self.pool) + 1) == 0
        except Exception:
            log.warning("session %s could not be released cleanly", slot.process_id, exc_info=True)
            recycled = False
        self.registry.set_status(slot.process_id, "completed")
        self.registry.emit("session.ended", caller_id=slot.caller_id, agent=slot.persona, process=slot.process_id)
        if recycled:
            self._pooled(child.handle, first=hand_on)
        else:
            kill_actor(child.handle)
        if summarise and held is not None:
            self._background(self._summarise(held))
        return held

    async def _summarise(self, held: dict[str, str]) -> str:
        """The persona summarises a conversation it let go into its memory of the caller, and ends it."""
        try:
            handle = await self.persona_handle(held["persona"])
            summary: str = await handle.summarise_session.remote(held["session_id"], held["caller_id"])
            return summary
        except Exception:
            log.warning("the session %s could not be summarised", held["session_id"], exc_info=True)
            return ""

    async def _housekeeping(self) -> None:
        """Release idle sessions, size the pool to demand and write the registry, off every caller's path."""
        idle_every = min(30.0, self.settings.session_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(min(idle_every, 5.0))
            try:
                for slot in self.sessions.idle(self.settings.session_idle_timeout_s):
                    key = self._key(slot)
                    async with self.sessions.lock(key):
                        if self.sessions.get(key) is slot:
                            await self._release(slot, summarise=True)
                    self.sessions.settle(key)
                await self._size_pool()
                self.registry.trim_finished()
                await self.registry.flush()
            except Exception:
                log.exception("housekeeping failed")

    async def _size_pool(self) -> None:
        """Grow the pool ahead of a burst; shrink it back to its floor when callers stop coming."""
        for _ in range(min(len(self.pool), self.sessions.pool_surplus(len(self.pool) + self.pool_filling))):
            pid, handle = self.pool.pop()
            kill_actor(handle)
            self.registry.set_status(pid, "completed")
        if self.sessions.pool_target(len(self.pool) + self.pool_filling):
            self._background(self._fill_pool())

    # ------------------------------------------------------------------ work between personas

    async def persona_handle(self, name: str) -> Any:
        definition = self.catalog.get(name)
        pid = self.persona_ids.get(definition.key)
        child = self.supervisor.children.get(pid) if pid else None
        if child is None or child.handle is None:
            raise PersonaNotFound(f"{definition.name} has no running persona actor.")
        return child.handle

    async def ask_persona(self, persona: str, question: str, asker: str, parent_id: str | None = None) -> str:
        handle = await self.persona_handle(persona)
        self.registry.emit("tool.ask_persona", process=parent_id, agent=asker, target=persona)
        return await handle.ask.remote(question, asker)

    async def spawn_task(self, parent_id: str, specialist: str, task: str) -> str:
        """Delegate `task` to a specialist: a child Task process that lives until it answers."""
        definition = self.catalog.find(specialist)
        if definition is None:
            return f"There is no specialist called {specialist!r}."
        parent = self.registry.processes.get(parent_id)
        requested_by = parent.agent if parent else "someone"
        pid = self.registry.register(
            ProcessInfo(
                id=new_process_id(),
                kind="task",
                agent=definition.name,
                name=f"{definition.key}-task",
                task=task[:500],
                parent_id=parent_id,
            )
        )
        handle = None
        try:
            if self.registry.spend.get(definition.name, 0.0) >= definition.budget_usd:
                raise BudgetExceeded(f"{definition.name} has used the whole ${definition.budget_usd:.2f} budget.")
            handle = TaskActor.remote(  # type: ignore[attr-defined]
                self.settings, self.catalog, definition.name, self.registry.spend.get(definition.name, 0.0)
            )
            self.registry.set_status(pid, "running")
            result, delta = await handle.run.remote(task, requested_by)
            await self.report(pid, delta)
            self.registry.set_status(pid, "completed")
            return result or f"{definition.name} finished without a written result."
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc).splitlines()[0]
            self.registry.set_status(pid, "failed", message)
            return f"{definition.name} could not finish the task: {message}"
        finally:
            if handle is not None:
                kill_actor(handle)

    async def schedule_callback(self, parent_id: str, persona: str, number: str, specialist: str, task: str) -> str:
        """Delegate `task` now and phone `number` back with the result when it is done (VAPI create-call).
        Answers at once: the caller need not hold the line."""
        from troupe.actors.caller import normalise_phone

        phone = normalise_phone(number)
        if phone is None:
            return f"Error: {number!r} is not a phone number (use E.164, like +15551234567)."
        if self.catalog.find(specialist) is None:
            return f"There is no specialist called {specialist!r}."
        self._background(self._callback(parent_id, persona, phone, specialist, task))
        return f"{specialist} is on it; {persona} will call {phone} back with the result."

    async def _callback(self, parent_id: str, persona: str, phone: str, specialist: str, task: str) -> None:
        from troupe.integrations.outbound import OutboundFailed, vapi_create_call

        result = await self.spawn_task(parent_id, specialist, task)
        pid = self.registry.register(
            ProcessInfo(
                id=new_process_id(), kind="task", agent=persona, name="vapi-callback",
                task=f"Call {phone} back: {task[:200]}", parent_id=parent_id,
            )
        )  # fmt: skip
        self.registry.set_status(pid, "running")
        try:
            call_id = await vapi_create_call(self.settings, phone, persona, f"Hi, it's {persona}. {result}")
        except OutboundFailed as exc:
            self.registry.set_status(pid, "failed", f"callback not placed: {exc}")
            self.registry.emit("callback.failed", process=pid, agent=persona, error=str(exc))
            return
        self.registry.set_status(pid, "completed")
        self.registry.emit("callback.placed", process=pid, agent=persona, call_id=call_id)

    async def remember_call(self, persona: str, caller_id: str, transcript: str, source: str) -> str:
        """A finished call or thread goes into the persona's memory of the caller: the live session's own
        transcript when troupe served the conversation, else the platform's transcript."""
        summary = await self.end_session(caller_id, persona)
        if summary:
            return summary
        handle = await self.persona_handle(persona)
        return await handle.remember_conversation.remote(caller_id, transcript, source)

    async def run_persona_tool(self, persona: str, caller_id: str, call: ToolCall) -> str:
        handle = await self.persona_handle(persona)
        self.registry.emit("tool.call", agent=persona, tool=call.name, caller_id=caller_id)
        return await handle.run_tool.remote(caller_id, call)

    async def _life_loop(self, persona: str) -> Any:
        definition = self.catalog.get(persona)
        if not self.life_loops_up.is_set():
            # life loops start just after the door opens; a request that early waits for them
            await asyncio.wait_for(self.life_loops_up.wait(), 120)
        pid = self.life_ids.get(definition.key)
        child = self.supervisor.children.get(pid) if pid else None
        if child is None or child.handle is None:
            raise PersonaNotFound(f"{definition.name} has no running life loop.")
        return child.handle

    async def trigger(self, persona: str, activity: str) -> str:
        return await (await self._life_loop(persona)).trigger.remote(activity)

    async def schedules(self, persona: str | None = None) -> list[dict[str, Any]]:
        names = [self.catalog.get(persona).name] if persona else [p.name for p in self.catalog.executives()]
        loops = [await self._life_loop(n) for n in names]
        found = await asyncio.gather(*(loop.schedules.remote() for loop in loops))
        return [entry for entries in found for entry in entries]

    async def update_schedule(
        self, persona: str, activity: str, cron_expression: str | None, is_paused: bool | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await (await self._life_loop(persona)).update_schedule.remote(
            activity, cron_expression=cron_expression, is_paused=is_paused
        )
        self.registry.emit("schedule.changed", agent=result["persona"], activity=activity,
                           cron_expression=result["cron_expression"], is_paused=result["is_paused"])  # fmt: skip
        return result

    async def life_started(self, parent_id: str, persona: str, activity: str) -> str:
        """A life activity is a process of its own, a child of the persona's life loop."""
        pid = self.registry.register(
            ProcessInfo(
                id=new_process_id(), kind="task", agent=persona, name=f"life:{activity}",
                task=f"{persona}'s {activity}", parent_id=parent_id,
            )
        )  # fmt: skip
        self.registry.set_status(pid, "running")
        return pid

    async def life_finished(
        self, pid: str | None, persona: str, activity: str, status: str, error: str | None, seconds: float
    ) -> None:
        self.life_counts[(persona, activity, status)] += 1
        self.life_seconds[(persona, activity)] = self.life_seconds.get((persona, activity), 0.0) + seconds
        if pid is not None:
            self.registry.set_status(pid, "failed" if status == "failed" else "completed", error)
        self.registry.emit(f"life.{status}", agent=persona, activity=activity, process=pid, error=error)

    # ------------------------------------------------------------------ read side (control panel, CLI)

    async def list_processes(
        self, status: str | None = None, agent: str | None = None, kind: str | None = None
    ) -> list[ProcessInfo]:
        return self.registry.list_processes(status, agent, kind)

    async def get_process(self, pid: str) -> tuple[ProcessInfo, list[ProcessInfo]] | None:
        return self.registry.get_process(pid)

    async def list_sessions(self) -> list[SessionInfo]:
        out = []
        for slot in self.sessions:
            info = self.registry.processes[slot.process_id]
            idle = time.monotonic() - slot.last_active
            out.append(
                SessionInfo(
                    caller_id=slot.caller_id,
                    process_id=slot.process_id,
                    agent=slot.persona,
                    status=info.status,
                    started_at=info.started_at,
                    last_active_at=datetime.fromtimestamp(time.time() - idle, tz=UTC),
                )
            )
        return out

    async def status(self) -> dict[str, Any]:
        alive = [p for p in self.registry.processes.values() if p.status in ("running", "pending")]
        return {
            "status": "ok",
            "uptime_s": time.time() - self.started,
            "process_count": len(alive),
            "session_count": len(self.sessions),
            "pool_size": len(self.pool),
            "personas": self.catalog.names(),
            "executives": [p.name for p in self.catalog.executives()],
            "active_personas": [
                self.registry.processes[pid].agent
                for pid in self.life_ids.values()
                if pid in self.registry.processes and self.registry.processes[pid].status == "running"
            ],
            "backend": self.settings.effective_backend,
            "spend": dict(self.registry.spend),
            "processes": dict(Counter((p.kind, p.status) for p in self.registry.processes.values())),
            "restarts": restarts_by_kind(self.registry.processes.values()),
            "life_runs": dict(self.life_counts),
            "life_seconds": dict(self.life_seconds),
            "startup_s": dict(self.timings),
        }

    async def events_since(self, seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        return self.registry.events_since(seq, limit)

    async def ping(self) -> bool:
        return True

    async def readiness(self) -> dict[str, str]:
        """Is each thing a turn needs reachable right now? ("ok" or what failed)."""
        checks: dict[str, str] = {}
        try:
            assert self.store is not None
            await self.store.ping()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"failed: {getattr(exc, 'message', type(exc).__name__)}"
        checks["model"] = await self._model_check()
        return checks

    async def _model_check(self) -> str:
        backend = self.settings.effective_backend
        if backend == "fake":
            return "ok"
        if backend == "local":
            return await self.model_status()
        import httpx

        base = (self.settings.openai_base_url or "https://api.openai.com/v1").rstrip("/")
        host = httpx.URL(base).host
        try:
            async with httpx.AsyncClient(timeout=3) as http:
                response = await http.get(f"{base}/models")
            return "ok" if response.status_code < 500 else f"failed: {host} answered {response.status_code}"
        except httpx.HTTPError as exc:
            return f"failed: {host} unreachable ({type(exc).__name__})"

    async def model_status(self) -> str:
        """The offline model: "ok", "loading", or "failed: <why>" (what /ready and a refused turn say)."""
        children = self.supervisor.children
        info = next((p for p in self.registry.processes.values() if p.kind == "local_model" and p.id in children), None)
        if info is None:
            lost = [p for p in self.registry.processes.values() if p.kind == "local_model"]
            reason = lost[-1].error if lost and lost[-1].error else "the offline model is not running"
            return f"failed: {reason}"
        if info.status == "failed":
            return f"failed: {info.error or 'the offline model cannot run'}"
        try:
            state = await asyncio.wait_for(children[info.id].handle.state.remote(), 5)
        except Exception as exc:
            return f"failed: the offline model does not answer ({type(exc).__name__})"
        if state.status == "failed":
            return f"failed: {state.reason}"
        return str(state.status)

    # ------------------------------------------------------------------ helpers

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

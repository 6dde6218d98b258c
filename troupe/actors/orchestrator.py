"""The orchestrator actor: a thin actor over the registry of every process (`registry.py`), the
supervisor of every actor (`supervisor.py`) and the keeper of callers' sessions and the warm pool
(`session_keeper.py`). It starts troupe, recovers it after its own process dies, and routes work
between personas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import uuid4

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from troupe.actors.local_model import LocalModel
from troupe.actors.models import LOCAL_MODEL_ACTOR
from troupe.actors.persona import PersonaActor
from troupe.actors.registry import Registry, restarts_by_kind
from troupe.actors.session import SessionActor
from troupe.actors.session_keeper import SESSION_POLICY, SessionKeeper, SessionLease
from troupe.actors.supervisor import Child, Supervisor, kill_actor
from troupe.actors.task import TaskActor
from troupe.config.settings import Settings
from troupe.core.chat import ToolCall
from troupe.core.errors import BudgetExceeded, PersonaNotFound, StoreUnavailable
from troupe.core.messages import (
    LifeRunCount,
    LifeTime,
    MetricsDelta,
    OrchestratorStatus,
    ProcessCount,
    ProcessInfo,
    ProcessKind,
    ProcessStatus,
    SessionInfo,
    new_process_id,
    utcnow,
)
from troupe.core.persona_file import PersonaCatalog, PersonaDef
from troupe.core.series import KEEP, Series, Window
from troupe.core.supervision import Policy
from troupe.store import Store

log = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "orchestrator"


class NodeRing:
    """The cluster's live nodes, taken in turn by each kind of actor: a kind's next actor goes on the
    next node, so every kind is spread evenly (Ray's own SPREAD is best effort, and left 4 of 4 sessions
    on one of two nodes). The turn is per kind: with one turn for all, a start-up that made a session
    and a life loop by turns put every session on one node. The list is read from Ray at most every few
    seconds; on one node it says nothing."""

    REFRESH_S = 5.0

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.read_at = float("-inf")
        self.turns: Counter[str] = Counter()

    def next(self, kind: str) -> str | None:
        if time.monotonic() - self.read_at > self.REFRESH_S:
            self.ids = sorted(node["NodeID"] for node in ray.nodes() if node.get("Alive"))
            self.read_at = time.monotonic()
        if len(self.ids) < 2:
            return None
        self.turns[kind] += 1
        return self.ids[self.turns[kind] % len(self.ids)]


AFTER_DEATH_S = 60.0  # how long after an actor died new ones are placed on the orchestrator's node
CHART_EVERY_S = 10.0  # how often the charts take in new turns and sample the gauges
TURNS_READ = 5000  # turns read from the store at a time
DEDUP_COUNT_EVERY_S = 60.0  # how often the de-duplication tables are counted (for status and /metrics)
HISTORY_SWEEP_EVERY_S = 3600.0  # how often history older than TROUPE_HISTORY_KEEP_DAYS is swept away
SESSION_ACTOR_PREFIX = "session-"  # session actors' names (detached: they outlive this process)
TAKE_BACK_TIMEOUT_S = 5.0  # how long a restarted orchestrator waits for a surviving session to answer


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class Orchestrator:
    def __init__(self, settings: Settings, catalog: PersonaCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.started = time.time()
        self.store: Store | None = None
        self.registry = Registry(self._background)  # process rows, events and spend
        self.own_id: str | None = None  # this orchestrator's own row in the registry
        self.persona_ids: dict[str, str] = {}
        self.life_ids: dict[str, str] = {}
        self.life_counts: Counter[tuple[str, str, str]] = Counter()  # (persona, activity, status) since start
        self.life_seconds: dict[tuple[str, str], float] = {}
        self.ready = False
        self.timings: dict[str, float] = {}  # start-up phases, seconds (troupe serve --verbose prints them)
        self.nodes = NodeRing() if settings.placement == "spread" else None  # where its actors go
        self.made: set[str] = set()  # the named actors made so far (a second one is a restart)
        self.dedup_rows: dict[str, int] = {}  # de-duplication tables' sizes, counted now and then
        self.dedup_counted_at = float("-inf")
        self.history_swept_at = float("-inf")  # the first sweep comes with the first housekeeping
        self.node_of: dict[tuple[str, int], str] = {}  # (process id, incarnation) -> Ray node id
        self.series = Series()  # the panel's charts: a day of minutes, fed from the store's turns
        self.turn_cursor = 0  # the last turn counted into the series
        self.charting = asyncio.Lock()
        self.supervisor = Supervisor(  # the supervised children, watched and restarted
            self.registry,
            spawn_slots=int(ray.available_resources().get("CPU", 2)),
            restart_factory=self._restart_factory,
            failure_of=self._failure_of,
        )
        self.keeper = SessionKeeper(  # callers' sessions and the warm pool
            settings, self.registry, self.supervisor, self._make_session, self.persona_handle, self._background
        )
        self.life_loops_up = asyncio.Event()
        self.callers_served = asyncio.Event()  # the store and the model are up: callers can be served
        self.rest_begun = False
        self.settled = False  # every actor of the start-up is up (the warm pool too)
        self.model_failure: str | None = None  # why the offline model cannot run, when it cannot
        self.me: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting = asyncio.Lock()
        self.recovering = ray.get_runtime_context().was_current_actor_reconstructed
        if self.recovering:
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

    async def start(self, defer_rest: bool = False) -> OrchestratorStatus:
        """Open the store (running migrations), rebuild the registry and start what callers need: the
        personas and the offline model. Life loops and the warm pool follow in the background (after
        `start_rest()` when `defer_rest`: `troupe serve` opens its door first), so the door opens as soon
        as a caller can be answered. Returns the status, with start-up timings."""
        async with self._starting:
            if self.ready:
                return await self.status()
            return await self._start(defer_rest)

    async def _start(self, defer_rest: bool) -> OrchestratorStatus:
        began = time.perf_counter()
        self.me = ray.get_runtime_context().current_actor
        self.store = await Store.open_for(self.settings, "orchestrator", migrate=True)
        self.registry.store = self.store
        await self.registry.rebuild()
        self.timings["store"] = time.perf_counter() - began
        if self.recovering:
            kept = await self._take_back_sessions()
        else:
            kept = 0
            self._stop_stray_sessions()
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
        model = None
        if self.settings.effective_backend == "local":
            model = asyncio.ensure_future(self._timed("model", self._supervise(
                "local_model", "model", "troupe", LOCAL_MODEL_ACTOR, "Serve the offline model", SESSION_POLICY,
                self._make_local_model,
            )))  # fmt: skip
        if self.recovering:
            # callers are waiting (those whose sessions died with it first): actors for them start before
            # the personas, which would otherwise take both cores while callers wait for cold starts
            if model is None:
                self.callers_served.set()
            held = sum(1 for p in self.registry.lost if p.kind == "session" and p.agent != "pool") - kept
            await self.keeper.fill_pool(max(1, min(held, self.settings.max_sessions)))
        personas = asyncio.ensure_future(asyncio.gather(*(
            self._supervise(
                "persona", "personas", persona.name, f"{persona.key}-main", "Persona agent",
                self._policy(persona.name), partial(self._make_persona, persona.name),
            )
            for persona in self.catalog.executives()
        )))  # fmt: skip
        phase = time.perf_counter()
        try:
            if model is not None:
                await model
            # a turn needs the store and the model, not the persona actors (they summarise, and answer
            # other personas): callers are served from here
            self.callers_served.set()
            await personas
        except BaseException:
            personas.cancel()
            raise
        self.timings["personas"] = time.perf_counter() - phase
        if not defer_rest:
            self.rest_begun = True
            await self._start_rest()
        self._background(self._housekeeping())
        self._background(self._charting())
        await self.registry.flush()  # the registry is in the store from the start: a restart finds what it lost
        self.ready = True
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
            await self.keeper.fill_pool(min(1, self.settings.session_pool_size))
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
        await self.keeper.fill_pool()
        self.timings["pool"] = time.perf_counter() - began
        self.settled = True

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
        await self.keeper.shutdown()
        for child in list(self.supervisor.children.values()):
            kill_actor(child.handle)
            self.registry.set_status(child.process_id, "completed")
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

    def placed(self, kind: str) -> dict[str, Any]:
        """Options that put the next actor of a kind on the next node in turn (spread), or Ray's default (pack).
        For a while after any actor died, new ones go on this node instead: the death may have been a
        node's, which Ray takes tens of seconds to notice, and an actor held to a dead node never starts."""
        if self.nodes is None:
            return {}
        if time.monotonic() - self.registry.last_death_at < AFTER_DEATH_S:
            return self.here()
        node = self.nodes.next(kind)
        # While starting, an actor is held to its node: a soft affinity let Ray put 5 of 5 personas on one
        # node of two while the nodes were busy starting workers. Later it is soft, so an actor meant for
        # a node that died before Ray noticed starts elsewhere rather than waiting on it for good.
        held = NodeAffinitySchedulingStrategy(node_id=node, soft=self.settled) if node else None
        return {"scheduling_strategy": held} if held else {}

    def here(self) -> dict[str, Any]:
        """Options that put an actor on the orchestrator's own node (soft: any other if it cannot)."""
        node = ray.get_runtime_context().get_node_id()
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True)}

    async def _named(self, cls: Any, name: str, *args: Any) -> Any:
        """Create a named actor. Right after a kill, Ray may still hold the name for a moment; an actor
        whose node died holds it until Ray has noticed the node is gone (tens of seconds), so after a
        moment the holder is told to go."""
        for attempt in range(100):
            try:
                # a restart goes on this node (the head): the node its last one was on may be the
                # one that died, and Ray may take a while yet to know that
                placement = self.placed(name.split("-")[0]) if name not in self.made else self.here()
                self.made.add(name)
                return cls.options(name=name, namespace=self.settings.namespace, **placement).remote(*args)
            except ValueError:
                if attempt == 10:
                    with contextlib.suppress(Exception):
                        ray.kill(ray.get_actor(name, namespace=self.settings.namespace), no_restart=True)
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
        # imported here, not with this module: every session actor imports this module to hold the
        # orchestrator's handle (Ray loads an actor's class to make a handle of it), and the life loop's
        # feeds and Slack client would cost each of them a quarter of a second of CPU and their memory
        from troupe.actors.life_loop import LifeLoopActor

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
        # detached and named: a caller's conversation outlives this process, and a restarted orchestrator
        # finds its session actors again by name (`_take_back_sessions`)
        handle = SessionActor.options(  # type: ignore[attr-defined]
            name=f"{SESSION_ACTOR_PREFIX}{uuid4().hex[:12]}", namespace=self.settings.namespace,
            lifetime="detached", **self.placed("session"),
        ).remote(self.settings, self.catalog, self.me)  # fmt: skip
        await handle.warm.remote()
        return handle

    def _session_actor_names(self) -> list[str]:
        """The named session actors alive in this troupe's namespace (those of a process that died too)."""
        return [
            found["name"]
            for found in ray.util.list_named_actors(all_namespaces=True)
            if found["namespace"] == self.settings.namespace and found["name"].startswith(SESSION_ACTOR_PREFIX)
        ]

    async def _take_back_sessions(self) -> int:
        """After a restart: every session actor that outlived the old process is taken back (its caller
        is served on, mid-conversation); free ones join the pool. Returns how many conversations were kept."""

        async def ask(name: str) -> tuple[Any, dict[str, Any] | None] | None:
            try:
                handle = ray.get_actor(name, namespace=self.settings.namespace)
            except ValueError:
                return None  # gone since it was listed
            try:
                return handle, await asyncio.wait_for(handle.holds.remote(), TAKE_BACK_TIMEOUT_S)
            except Exception:
                kill_actor(handle)  # dying or stuck: not worth keeping
                return None

        kept = 0
        for found in await asyncio.gather(*(ask(name) for name in self._session_actor_names())):
            if found is not None:
                handle, holds = found
                definition = self.catalog.find(holds["persona"]) if holds else None
                kept += self.keeper.adopt(handle, holds, definition) == "kept"
        for info in self.registry.lost:
            # (a row written before its actor took a caller says "pool" still: those kept are running)
            if info.kind == "session" and info.agent == "pool" and info.id not in self.supervisor.children:
                # a free actor has nothing to lose: those that lived on are in the pool under new rows
                self.registry.set_status(info.id, "completed")
        return kept

    def _stop_stray_sessions(self) -> None:
        """A fresh start: session actors of an orchestrator stopped for good before they noticed go now."""
        for name in self._session_actor_names():
            with contextlib.suppress(ValueError):
                kill_actor(ray.get_actor(name, namespace=self.settings.namespace))

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
            self.keeper.touch(process_id)
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

    # ------------------------------------------------------------------ sessions

    async def _serving(self, persona: str) -> PersonaDef:
        """The persona a caller asked for, once callers are served: the door opens while troupe is still
        starting (or restarting), and a caller this early waits for the personas."""
        definition = self.catalog.find(persona)
        if definition is None:
            raise PersonaNotFound(
                f"Unknown persona {persona!r}. Known: {', '.join(self.catalog.names())}", param="model"
            )
        if not self.callers_served.is_set():
            await asyncio.wait_for(self.callers_served.wait(), 120)
        return definition

    async def session_for(self, caller_id: str, persona: str, failed_generation: int | None = None) -> SessionLease:
        """The session actor for this caller and persona (see `SessionKeeper.session_for`)."""
        return await self.keeper.session_for(caller_id, await self._serving(persona), failed_generation)

    async def lend(self, door: str, persona: str) -> SessionLease:
        """An actor for a door's one-turn sessions of this persona (see `SessionKeeper.lend`)."""
        return await self.keeper.lend(door, await self._serving(persona))

    async def give_back(self, process_id: str) -> None:
        await self.keeper.give_back(process_id)

    async def end_session(self, caller_id: str, persona: str, source: str = "session") -> str | None:
        """The platform says the conversation is over: let it go now, and return its summary."""
        return await self.keeper.end(caller_id, self.catalog.get(persona), source)

    async def forget_caller(self, caller_id: str) -> dict[str, int]:
        """Delete a person's data everywhere: their live sessions end unsummarised, then the store drops
        their transcripts, sessions, memories (vectors and full-text entries with them), core blocks and
        call ids. Returns the counts, by kind."""
        ended = await self.keeper.let_go_of(caller_id)
        if self.store is None:
            raise StoreUnavailable("troupe is still starting; try again in a moment.")
        counts = await self.store.erase_caller(caller_id)
        self.registry.emit("caller.forgotten", live_sessions=ended, **counts)
        return {"live_sessions": ended, **counts}

    async def _housekeeping(self) -> None:
        """Release idle sessions, size the pool to demand and write the registry, off every caller's path."""
        every = min(5.0, self.settings.session_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await self.keeper.release_idle()
                await self.keeper.size_pool()
                self.registry.trim_finished()
                await self.registry.flush()
                if time.monotonic() - self.dedup_counted_at > DEDUP_COUNT_EVERY_S and self.store is not None:
                    self.dedup_rows = await self.store.deduplication_sizes()
                    self.dedup_counted_at = time.monotonic()
                if time.monotonic() - self.history_swept_at > HISTORY_SWEEP_EVERY_S and self.store is not None:
                    self.history_swept_at = time.monotonic()
                    if gone := {name: n for name, n in (await self.store.sweep_history()).items() if n}:
                        log.info("history past %g days swept: %s", self.settings.history_keep_days, gone)
            except Exception:
                log.exception("housekeeping failed")

    async def _charting(self) -> None:
        """Feed the charts: the turns kept since the last look (a day of them at start, so a restarted
        orchestrator's charts are not blank), and the live sessions, free pool and restarts."""
        while True:
            try:
                await self._count_turns()
                live = len(self.keeper.directory.conversations())
                self.series.sample(utcnow(), sessions=live, pool=len(self.keeper.pool),
                                   restarted_total=sum(self.registry.restarted.values()))  # fmt: skip
            except Exception:
                log.warning("the charts could not be brought up to date", exc_info=True)
            await asyncio.sleep(CHART_EVERY_S)

    async def _count_turns(self) -> None:
        if self.store is None:
            return
        async with self.charting:
            since = utcnow() - timedelta(minutes=KEEP) if self.turn_cursor == 0 else None
            while True:
                found = await self.store.turns_since(self.turn_cursor, since=since, limit=TURNS_READ)
                for turn in found:
                    self.series.add_turn(turn)
                if found:
                    self.turn_cursor = found[-1].id
                if len(found) < TURNS_READ:
                    return

    async def series_view(self, window: Window) -> dict[str, Any]:
        """The charts of the last hour or day, with the turns kept up to this moment."""
        with contextlib.suppress(Exception):  # the store gone: the charts as they stand
            await self._count_turns()
        return self.series.view(window, utcnow(), personas=[p.name for p in self.catalog.executives()])

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

    async def spawn_task(self, parent_id: str, specialist: str, task: str, trace: dict[str, str] | None = None) -> str:
        """Delegate `task` to a specialist: a child Task process that lives until it answers. `trace`: the
        W3C trace context of the tool call that asked, handed on to the task."""
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
            handle = TaskActor.options(**self.placed("task")).remote(  # type: ignore[attr-defined]
                self.settings, self.catalog, definition.name, self.registry.spend.get(definition.name, 0.0)
            )
            self.registry.set_status(pid, "running")
            result, delta = await handle.run.remote(task, requested_by, trace)
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
        from troupe.core.caller import normalise_phone

        phone = normalise_phone(number)
        if phone is None:
            return f"Error: {number!r} is not a phone number (use E.164, like +15551234567)."
        if self.catalog.find(specialist) is None:
            return f"There is no specialist called {specialist!r}."
        self._background(self._callback(parent_id, persona, phone, specialist, task))
        return f"{specialist} is on it; {persona} will call {phone} back with the result."

    async def _callback(self, parent_id: str, persona: str, phone: str, specialist: str, task: str) -> None:
        from troupe.clients.outbound import OutboundFailed, vapi_create_call

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
        summary = await self.end_session(caller_id, persona, source)
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
        for slot in self.keeper.directory.conversations():
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
                    session_id=slot.session_id or "",
                )
            )
        return out

    async def status(self) -> OrchestratorStatus:
        alive = [p for p in self.registry.processes.values() if p.status in ("running", "pending")]
        processes = self.registry.processes
        conversations = self.keeper.directory.conversations()
        return OrchestratorStatus(
            uptime_s=time.time() - self.started,
            process_count=len(alive),
            session_count=len(conversations),
            sessions_by_persona=dict(Counter(slot.persona for slot in conversations)),
            pool_size=len(self.keeper.pool),
            lent_count=len(self.keeper.directory) - len(conversations),
            personas=tuple(self.catalog.names()),
            executives=tuple(p.name for p in self.catalog.executives()),
            active_personas=tuple(
                processes[pid].agent
                for pid in self.life_ids.values()
                if pid in processes and processes[pid].status == "running"
            ),
            backend=self.settings.effective_backend,
            spend=dict(self.registry.spend),
            budgets={p.name: p.budget_usd for p in self.catalog},
            processes=tuple(
                ProcessCount(kind=kind, status=status, count=count)
                for (kind, status), count in Counter((p.kind, p.status) for p in processes.values()).items()
            ),
            restarts=restarts_by_kind(processes.values()),
            restarted=dict(self.registry.restarted),
            store_writes=self.registry.writes.snapshot(),
            life_runs=tuple(
                LifeRunCount(persona=persona, activity=activity, status=status, count=count)
                for (persona, activity, status), count in self.life_counts.items()
            ),
            life_seconds=tuple(
                LifeTime(persona=persona, activity=activity, seconds=seconds)
                for (persona, activity), seconds in self.life_seconds.items()
            ),
            startup_s=dict(self.timings),
            dedup_rows=self.dedup_rows,
        )

    async def events_since(self, seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        return self.registry.events_since(seq, limit)

    async def recent_events(
        self, groups: tuple[str, ...] = (), type_prefix: str = "", limit: int = 50, offset: int = 0, agent: str = ""
    ) -> tuple[list[dict[str, Any]], int]:
        return self.registry.recent_events(
            groups=groups, type_prefix=type_prefix, agent=agent, limit=limit, offset=offset
        )

    async def audited(self, action: str, actor: str, subject: str) -> None:
        """An operator's action on a person's data, in the live feed (the store keeps the audit log)."""
        self.registry.emit(f"audit.{action}", actor=actor, subject=subject)

    async def process_nodes(self) -> dict[str, dict[str, str]]:
        """The Ray node each live supervised actor runs on, by process id (the orchestrator's too), as the
        panel shows it: the id's first 12 characters and 'head' or 'worker' with its address ('gone' for a
        node Ray no longer has). Each actor is asked once per incarnation; one that does not answer within
        a second is left out."""
        here = ray.get_runtime_context().get_node_id()
        if self.own_id:
            self.node_of[(self.own_id, 0)] = here
        actors = {(c.process_id, c.generation): c.handle for c in self.supervisor.children.values() if c.handle}
        actors.update({(pid, 0): handle for pid, handle in self.keeper.pool})  # the warm pool's, unbound

        async def ask(key: tuple[str, int], handle: Any) -> None:
            with contextlib.suppress(Exception):
                answer = await asyncio.wait_for(handle.ping.remote(), 1.0)
                self.node_of[key] = answer["node"]

        await asyncio.gather(*(ask(key, h) for key, h in actors.items() if key not in self.node_of))
        live = set(actors) | {(self.own_id or "", 0)}
        for key in [k for k in self.node_of if k not in live]:
            del self.node_of[key]  # bounded by the live actors
        names = {
            n["NodeID"]: f"{'head' if n['NodeID'] == here else 'worker'} {n.get('NodeManagerAddress', '')}".strip()
            for n in ray.nodes()
            if n.get("Alive")
        }
        return {pid: {"id": node[:12], "name": names.get(node, "gone")} for (pid, _), node in self.node_of.items()}

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

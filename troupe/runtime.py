"""The driver side of troupe: start (or join) Ray, start the orchestrator, and talk to sessions.

`Runtime` is what the CLI and the door hold. `SessionClient` resolves a caller's session once, caches
its handle, and runs each turn in the door: the session assembles it, the model streams straight to the
caller, and the finished turn goes back to the session. The orchestrator stays off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RaySystemError

from troupe.actors.agent import AgentLoop, budget_guard
from troupe.actors.models import ModelFactory
from troupe.actors.orchestrator import ORCHESTRATOR_NAME, Orchestrator
from troupe.actors.session import STALE, for_session, new_input
from troupe.actors.session_keeper import SessionLease
from troupe.clients import tracing as exporting
from troupe.config.settings import Settings
from troupe.control_panel.request_ids import IMPORT_PATH as REQUEST_ID_MIDDLEWARE
from troupe.core import tracing
from troupe.core.caller import is_anonymous
from troupe.core.chat import ChatMessage, ToolCall, ToolSpec, estimate_tokens
from troupe.core.errors import ConfigError, TroupeError, TroupeUnavailable
from troupe.core.logs import bind_context
from troupe.core.messages import (
    Done,
    DoorName,
    Failed,
    OrchestratorStatus,
    TurnAck,
    TurnEvent,
    TurnPlan,
    TurnRequest,
    TurnResult,
    TurnStats,
)
from troupe.core.persona_file import PersonaCatalog, load_personas
from troupe.core.prompt import recalled_section, transcript_window
from troupe.store import Store

log = logging.getLogger(__name__)


def init_ray(settings: Settings, *, quiet: bool = False) -> float:
    """Start a local Ray (or join RAY_ADDRESS). Returns the seconds it took. `quiet` keeps Ray's and its
    workers' own output out of this console: it stays in Ray's log files (see `ray_logs_dir`)."""
    began = time.perf_counter()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"namespace": settings.namespace, "log_to_driver": not quiet}
        if quiet:
            # Ray's driver-side messages (its own and those raylets push to the driver) go to the root
            # logger, which `troupe serve` sends to its log file
            kwargs["configure_logging"] = False
            ray_log = logging.getLogger("ray")
            ray_log.handlers.clear()
            ray_log.propagate = True
        if settings.ray_address:
            kwargs["address"] = settings.ray_address
        else:
            # a Ray of its own, even when another cluster runs on this machine (Ray would join that one)
            kwargs.update(address="local", include_dashboard=False, num_cpus=os.cpu_count() or 2)
            # Ray runs workers at nice 15, below anything else on the machine: for troupe its actors and
            # its Serve replica are the service, and a busy machine would starve them of the CPU first
            os.environ.setdefault("RAY_worker_niceness", "0")
            os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", REQUEST_ID_MIDDLEWARE)
            # direct ingress binds one replica to one port: several replicas are served by Serve's proxy
            if settings.door == "serve" and settings.serve_direct_ingress and settings.door_replicas == 1:
                os.environ.update(serve_direct_ingress_env(settings))
        # actors on other nodes rebuild the same settings from these variables
        kwargs["runtime_env"] = {
            "env_vars": settings.env_for_workers(),
            "worker_process_setup_hook": "troupe.core.logs.setup_worker",  # troupe's log lines in every worker
        }
        ray.init(**kwargs)
    return time.perf_counter() - began


def on_the_head() -> Any:
    """A placement on the cluster's head node, else (no head known) on this process's node, softly. The
    orchestrator goes there, so worker nodes can come and go under it; a cluster is gone with its head
    (Ray's control store lives there), so nothing is lost by holding the orchestrator to it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})]
    if heads:
        return NodeAffinitySchedulingStrategy(node_id=heads[0], soft=False)
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)


HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives its head node


def ray_logs_dir() -> str | None:
    """Where this Ray node writes its processes' logs (workers, raylet, Serve), when it is local."""
    node = getattr(ray._private.worker, "_global_node", None)
    try:
        return str(node.get_logs_dir_path()) if node is not None else None
    except Exception:
        return None


def serve_direct_ingress_env(settings: Settings) -> dict[str, str]:
    """Serve's throughput-optimized mode with the ingress replica bound to troupe's own port.

    Serve reads these when its controller, proxy and replicas start, so they must be in the environment
    before Ray starts (its processes inherit it)."""
    return {
        # runs before Serve's own middleware: an X-Request-ID Serve makes up is not taken for a caller's
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": REQUEST_ID_MIDDLEWARE,
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.port + 1),  # exclusive bound
    }


def direct_ingress_active(settings: Settings) -> bool:
    """True when this Ray was started with the direct-ingress environment for this port."""
    return all(os.environ.get(k) == v for k, v in serve_direct_ingress_env(settings).items())


class Runtime:
    def __init__(self, settings: Settings, catalog: PersonaCatalog, orchestrator: Any) -> None:
        self.settings = settings
        self.catalog = catalog
        self.orchestrator = orchestrator
        self.starting: Any = None  # the orchestrator's start-up, while it runs

    @classmethod
    def start(cls, settings: Settings, *, catalog: PersonaCatalog | None = None, detached: bool = False) -> Runtime:
        """Start every actor. Raises ConfigError / StoreUnavailable with a clear message on bad set-up."""
        runtime = cls.begin(settings, catalog=catalog, detached=detached)
        runtime.wait_started()
        return runtime

    @classmethod
    def begin(
        cls,
        settings: Settings,
        *,
        catalog: PersonaCatalog | None = None,
        detached: bool = False,
        defer_rest: bool = False,
        quiet: bool = False,
    ) -> Runtime:
        """Create the orchestrator and set it starting; `wait_started()` waits for it. In between, the door
        can start (it finds the orchestrator by name), so the two start-ups overlap."""
        catalog = catalog or load_personas(settings.personas_dir)
        init_ray(settings, quiet=quiet)
        try:
            old = ray.get_actor(ORCHESTRATOR_NAME, namespace=settings.namespace)
        except ValueError:
            old = None
        if old is not None:
            raise ConfigError(
                f"troupe is already running in Ray namespace {settings.namespace!r}; "
                "stop it first or use another TROUPE_NAMESPACE"
            )
        options: dict[str, Any] = {
            "name": ORCHESTRATOR_NAME,
            "namespace": settings.namespace,
            "scheduling_strategy": on_the_head(),
        }
        if detached:
            options["lifetime"] = "detached"
        orchestrator = Orchestrator.options(**options).remote(settings, catalog)  # type: ignore[attr-defined]
        runtime = cls(settings, catalog, orchestrator)
        runtime.starting = orchestrator.start.remote(defer_rest)
        return runtime

    def wait_started(self) -> OrchestratorStatus:
        """Wait for the orchestrator's start-up; on failure, leave nothing behind and raise troupe's error."""
        try:
            status: OrchestratorStatus = ray.get(self.starting)
        except Exception as exc:
            ray.kill(self.orchestrator, no_restart=True)
            _wait_until_gone(ORCHESTRATOR_NAME, self.settings.namespace)
            raise _unwrap(exc) from None
        return status

    @classmethod
    def connect(cls, settings: Settings) -> Runtime:
        """Join a running troupe (for `troupe status`)."""
        init_ray(settings.model_copy(update={"ray_address": settings.ray_address or "auto"}))
        try:
            orchestrator = ray.get_actor(ORCHESTRATOR_NAME, namespace=settings.namespace)
        except ValueError:
            raise ConfigError(f"no troupe is running in Ray namespace {settings.namespace!r}") from None
        return cls(settings, load_personas(settings.personas_dir), orchestrator)

    def stop(self) -> None:
        try:
            ray.get(self.orchestrator.shutdown.remote(), timeout=60)
        except Exception:
            log.warning("orchestrator shutdown was not clean", exc_info=True)
        ray.kill(self.orchestrator, no_restart=True)
        _wait_until_gone(ORCHESTRATOR_NAME, self.settings.namespace)

    def client(self) -> SessionClient:
        return SessionClient(self.orchestrator, self.settings, self.catalog)


def _wait_until_gone(name: str, namespace: str, within: float = 10.0) -> None:
    """Ray frees a killed actor's name a moment after `ray.kill`; wait for it, so a start that failed
    leaves nothing behind that a retry would mistake for a running troupe."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        time.sleep(0.05)
    log.warning("actor %s was killed but its name is still registered", name)


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps an actor's exception; give callers troupe's own error back."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TroupeError):
        return cause
    if isinstance(exc, TroupeError):
        return exc
    return exc


class RemoteTools:
    """The persona's own tools for one turn, run by its session actor (they need the store and the
    company); the door runs the rest of the turn itself."""

    def __init__(
        self, session: Any, turn_id: str, specs: tuple[ToolSpec, ...], trace: tracing.Carrier | None = None
    ) -> None:
        self.session = session
        self.turn_id = turn_id
        self._specs = specs
        self.trace = trace  # the turn's span, which the tools' spans in the session are children of

    def specs(self) -> tuple[ToolSpec, ...]:
        return self._specs

    async def run(self, call: ToolCall) -> str:
        result: str = await self.session.run_tool.remote(self.turn_id, call, self.trace)
        return result


@dataclass
class SessionCopy:
    """The door's copy of what a live session's turns are built from (see TurnPlan): its system
    prompt and tools for one context, its transcript at one version, and what its turns may spend.
    While it is current, the door builds a caller's next turn itself and the turn costs one call to
    the session actor (`finish`, which keeps it) instead of two."""

    process_id: str
    context: str = ""
    system: str = ""
    tools: tuple[ToolSpec, ...] = ()
    transcript: list[ChatMessage] = field(default_factory=list)
    version: int | None = None
    client_system: str | None = None  # the client's instructions the context was built with
    plan: TurnPlan | None = None  # the last plan taken: the persona, model and limits of the next
    pending: str | None = None  # the turn being built on this copy
    acked_at: float = 0.0  # when the session last kept a turn of this copy

    def known(self) -> tuple[str, int] | None:
        return (self.context, self.version) if self.context and self.version is not None else None

    def build(self, request: TurnRequest, fresh_s: float) -> TurnPlan | None:
        """The caller's next turn, built here; None when only the session can build it (the copy is not
        current or not fresh, since an idle session may have been let go; the client's instructions
        changed; the request is a retry or has no new input)."""
        if self.version is None or not self.context or self.plan is None or self.pending is not None:
            return None
        if time.monotonic() - self.acked_at > fresh_s:
            return None
        added, client_system = new_input(request.messages)
        if not added or client_system != self.client_system or (self.transcript and self.transcript[-1] == added[-1]):
            return None
        return self.plan.model_copy(
            update={"turn_id": secrets.token_hex(8), "input": added, "version": self.version, "built": True}
        )

    def take(self, plan: TurnPlan, request: TurnRequest, keep: int) -> tuple[ChatMessage, ...]:
        """Bring the copy up to the plan; returns the transcript the turn is built on."""
        if plan.system is not None and plan.own_tools is not None:
            self.context, self.system, self.tools = plan.context, plan.system, plan.own_tools
            self.client_system = new_input(request.messages)[1]
        if plan.window is not None:
            self.transcript = list(plan.window)
        else:
            self.transcript.extend(plan.input)
        del self.transcript[:-keep]
        if not plan.built:
            self.version = plan.version
            self.plan = plan.model_copy(update={"input": (), "system": None, "own_tools": None, "window": None})
        self.pending = plan.turn_id
        return tuple(self.transcript)

    def kept(self, plan: TurnPlan, new_messages: tuple[ChatMessage, ...], ack: TurnAck | None) -> None:
        """The session kept the turn: its transcript moved on by the reply, as this copy does."""
        if ack is None or self.pending != plan.turn_id or ack.behind or ack.context != self.context:
            self.version = None  # whatever the session holds now, this copy is not it
        else:
            self.transcript.extend(new_messages)
            self.version = ack.version
            self.acked_at = time.monotonic()
            if self.plan is not None:
                self.plan = self.plan.model_copy(update={"allowance": ack.allowance})
        self.pending = None


def this_door() -> DoorName | None:
    """The name of the actor this code runs in (a Serve door replica, which Serve names), or None in a
    driver or an unnamed actor."""
    try:
        context = ray.get_runtime_context()
        name = context.get_actor_name()
    except (RuntimeError, RaySystemError):
        return None
    if not name:
        return None
    return DoorName(name=name, namespace=SERVE_NAMESPACE if name.startswith("SERVE_REPLICA::") else context.namespace)


SERVE_NAMESPACE = "serve"  # where Ray Serve names its replicas (ray.serve._private.constants.SERVE_NAMESPACE)
RECALLED_LAYERS = ("profile", "episode")  # a caller's facts and past conversations (not the persona's own life)
RECALL_TIMEOUT_S = 1.0
RECALL_TOKENS = 600  # recalled memories' share of a turn's prompt, at most

LENT_IDLE_S = 30.0  # an actor lent for one-turn sessions and unused this long is given back
SESSION_TIMEOUT, SESSION_RESTARTED = "session_timeout", "session_restarted"  # codes of a prepare that failed
UNUSABLE = {STALE, SESSION_TIMEOUT, SESSION_RESTARTED}  # a prepare that failed so: its actor is not reused
COPY_FRESH_S = 30.0  # how long after its last turn a door builds a caller's next turn from its copy


class SessionClient:
    """Runs caller turns in the door. Holds session handles so only a caller's first turn visits the
    orchestrator. A turn is `prepare`d by the session actor (the door keeps a copy of what it sends,
    see SessionCopy), the reply streams from the model straight to the caller, and `finish` hands the
    turn back to be kept; while the door's copy is current it builds the next turn itself, so a steady
    caller's turn costs one call to the session actor.

    Every turn is durable whatever dies: its outcome is built up as it streams, a cut-off reply is kept
    marked interrupted and paid for, and if the session actor died mid-turn the door keeps the turn
    through the store itself. A caller with no identity is a one-turn session."""

    def __init__(self, orchestrator: Any, settings: Settings, catalog: PersonaCatalog) -> None:
        self.orchestrator = orchestrator
        self.settings = settings
        self.catalog = catalog
        self.models = ModelFactory(settings)
        # the handles of live sessions, least recently used first; bounded like the sessions themselves
        self.leases: OrderedDict[tuple[str, str], SessionLease] = OrderedDict()
        self.copies: dict[tuple[str, str], SessionCopy] = {}  # of the leased sessions' context
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._finishing: set[asyncio.Task[Any]] = set()
        self._store: Store | None = None
        # Building a turn from this door's copy is right only when no other door can have moved the
        # session on since: with several door replicas, a caller's turns land on any of them, and a
        # copy has no way to know it is behind before its turn goes to the model. Then every turn is
        # prepared by the session, which holds the transcript.
        self.builds_turns = settings.door == "uvicorn" or settings.door_replicas == 1
        self.door = this_door()  # a session waiting on a turn this door opened can tell if the door died
        # actors lent to this door for one-turn sessions (callers with no identity), by persona: the free
        # ones with when each was last used, most recent last. A one-turn turn is then two calls to its
        # actor (prepare, finish) and none to the orchestrator
        self.lent: dict[str, deque[tuple[SessionLease, float]]] = {}
        self.lent_idle_s = min(LENT_IDLE_S, settings.session_idle_timeout_s / 2)
        self.door_id = self.door.name if self.door is not None else f"{socket.gethostname()}:{os.getpid()}"

    async def store(self) -> Store:
        if self._store is None:
            self._store = await Store.open_for(self.settings, "door-turns")
        return self._store

    async def lease(
        self, caller_id: str, persona: str, failed: SessionLease | None = None, one_turn: bool = False
    ) -> SessionLease:
        if one_turn:
            return await self._lent(persona)
        key = (caller_id, persona.lower())
        lease = self.leases.get(key)
        if lease is not None and failed is None:
            self.leases.move_to_end(key)
            return lease
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                lease = self.leases.get(key)
                if lease is not None and (failed is None or lease.generation != failed.generation):
                    return lease
                lease = await self._session_for(caller_id, persona, failed.generation if failed else None)
                self.leases[key] = lease
                while len(self.leases) > self.settings.max_sessions * 2:
                    self.copies.pop(self.leases.popitem(last=False)[0], None)
                return lease
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    async def _lent(self, persona: str) -> SessionLease:
        """A free actor lent to this door for one-turn sessions of this persona, else one newly lent.
        Those unused for a while go back first (the orchestrator lets them go, as idle sessions)."""
        free = self.lent.setdefault(persona.lower(), deque())
        while free and time.monotonic() - free[0][1] > self.lent_idle_s:
            idle = free.popleft()[0]
            self.orchestrator.give_back.remote(idle.process_id)
        if free:
            return free.pop()[0]
        return await self._ask(lambda: self.orchestrator.lend.remote(self.door_id, persona))

    def _lend_back(self, lease: SessionLease, persona: str) -> None:
        """A lent actor whose one-turn session is over is free for this door's next."""
        self.lent.setdefault(persona.lower(), deque()).append((lease, time.monotonic()))

    async def _session_for(self, caller_id: str, persona: str, failed_generation: int | None) -> SessionLease:
        return await self._ask(lambda: self.orchestrator.session_for.remote(caller_id, persona, failed_generation))

    async def _ask(self, call: Callable[[], Any]) -> SessionLease:
        """Ask the orchestrator for a session's actor; while it is restarting (its process died), ask
        again for a while."""
        deadline = time.monotonic() + self.settings.orchestrator_recovery_s
        while True:
            try:
                lease: SessionLease = await asyncio.wait_for(call(), self.settings.session_start_timeout_s)
                return lease
            except (ActorUnavailableError, RayActorError):
                if time.monotonic() > deadline:
                    raise TroupeUnavailable("troupe is restarting; please try again in a moment.") from None
                await asyncio.sleep(0.25)
            except TimeoutError:
                raise TroupeUnavailable("No session could be started in time; please try again.") from None
            except Exception as exc:
                raise _unwrap(exc) from None

    async def _recall(self, request: TurnRequest) -> list[str]:
        """The caller's memories that bear on their latest words, best first; none when that fails (a
        turn never waits long on memory, nor fails for it)."""
        words = next((m.content for m in reversed(request.messages) if m.role == "user" and m.content), "")
        if not words or self.settings.recall_memories == 0:
            return []
        try:
            persona = self.catalog.get(request.persona)
            store = await self.store()
            found = await asyncio.wait_for(
                store.recall(persona.name, subject=request.caller_id, query=words[-2000:],
                             limit=self.settings.recall_memories, layers=RECALLED_LAYERS),
                RECALL_TIMEOUT_S,
            )  # fmt: skip
        except Exception as exc:
            log.warning("recall failed; the turn goes on without it: %s", type(exc).__name__)
            return []
        return [memory.content for memory in found]

    def _recalled(self, memories: list[str], persona: str, system: str) -> str:
        """The prompt's section of recalled memories: those not in it already, within the persona's
        token budget (at most RECALL_TOKENS)."""
        fresh = [m for m in memories if m not in system]
        room = min(RECALL_TOKENS, self.catalog.get(persona).token_budget - estimate_tokens(system))
        return recalled_section(fresh, room) if fresh and room > 0 else ""

    def forget(self, caller_id: str, persona: str) -> None:
        self.leases.pop((caller_id, persona.lower()), None)
        self.copies.pop((caller_id, persona.lower()), None)

    def _copy(self, request: TurnRequest, lease: SessionLease) -> SessionCopy:
        key = (request.caller_id, request.persona.lower())
        copy = self.copies.get(key)
        if copy is None or copy.process_id != lease.process_id:
            copy = self.copies[key] = SessionCopy(lease.process_id)
        return copy

    async def _prepare(self, request: TurnRequest, one_turn: bool) -> tuple[SessionLease, TurnPlan | Failed]:
        """Open the turn on the caller's session. If that actor died (or was released and reused), the
        turn goes to the caller's current session actor instead: the transcript is in the store."""
        lease = await self.lease(request.caller_id, request.persona, one_turn=one_turn)
        # a copy is trusted only while its conversation is live: well within the time an idle session is
        # kept, and short, since a conversation ended through another door replica leaves this one's copy
        fresh_s = min(self.settings.session_idle_timeout_s / 2, COPY_FRESH_S)
        if self.builds_turns and not one_turn and (built := self._copy(request, lease).build(request, fresh_s)):
            return lease, built
        for attempt in range(3):
            if not one_turn:
                request = request.model_copy(update={"known": self._copy(request, lease).known()})
            try:
                plan: TurnPlan | Failed = await asyncio.wait_for(
                    lease.handle.prepare.remote(request, self.door), self.settings.actor_call_timeout_s
                )
            except RayActorError:
                lease = await self.lease(request.caller_id, request.persona, failed=lease, one_turn=one_turn)
                continue
            except TimeoutError:
                busy = Failed(text="The session did not answer in time; please try again.",
                    code=SESSION_TIMEOUT, status=503,
                )  # fmt: skip
                return lease, busy
            if isinstance(plan, Failed) and plan.code == STALE and attempt < 2:
                self.forget(request.caller_id, request.persona)
                lease = await self.lease(request.caller_id, request.persona, one_turn=one_turn)
                continue
            return lease, plan
        unavailable = Failed(text="The session is restarting; please try again.", code=SESSION_RESTARTED,
            status=503,
        )  # fmt: skip
        return lease, unavailable

    async def turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        """Stream a turn: the session assembles it, the model's reply streams from here, and the
        finished turn is in the store before the stream's last event (the `done` or `error`). A caller
        who goes away mid-reply still has the reply so far kept (marked interrupted) and paid for."""
        exporting.setup(self.settings, "door")  # once per process, when an endpoint is configured
        began, first = time.perf_counter(), None
        one_turn = is_anonymous(request.caller_id)
        # the turn's span is never made current here: this generator yields to whoever streams it
        span = tracing.start("turn", parent=request.trace)
        trace = tracing.carrier(span)
        request = request.model_copy(
            update={"messages": for_session(request.messages, one_turn=one_turn), "trace": trace}
        )
        # the memories that bear on the caller's words are looked up while the session prepares the turn
        recalling = None if one_turn else asyncio.ensure_future(self._recall(request))
        lease, plan = await self._prepare(request, one_turn)
        if isinstance(plan, Failed):
            if one_turn and plan.code not in UNUSABLE:  # refused, the actor is as good as it was
                self._lend_back(lease, request.persona)
            if recalling is not None:
                recalling.cancel()
            tracing.failed(span, plan.code)
            span.end()
            yield plan
            return
        bind_context(persona=plan.persona, caller=request.caller_id, turn_id=plan.turn_id)  # this turn's lines
        copy = SessionCopy(lease.process_id) if one_turn else self._copy(request, lease)
        history = copy.take(plan, request, self.settings.history_turns * 4)
        loop = AgentLoop(
            speaker=plan.persona,
            model=self.models.for_persona(self.catalog.get(plan.persona)),
            model_name=plan.model_name,
            toolbox=RemoteTools(lease.handle, plan.turn_id, copy.tools, trace),
            max_iterations=plan.max_iterations,
            temperature=plan.temperature,
            budget_guard=budget_guard(plan.allowance),
            trace=span,
        )
        last: Done | None = None
        failure: TroupeError | None = None
        try:
            system = copy.system
            if recalling is not None and (recalled := self._recalled(await recalling, plan.persona, system)):
                system = f"{system}\n\n{recalled}"
            messages = (
                ChatMessage(role="system", content=system),
                *transcript_window(history, self.settings.history_turns),
            )
            async for event in loop.run(
                messages,
                client_tools=request.client_tools,
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                stop=request.stop,
            ):
                if isinstance(event, Done):
                    last = event
                    break
                if first is None:
                    first = time.perf_counter()
                yield event
        except TroupeError as exc:
            failure = exc
        except Exception:  # never leave a caller hanging on an unexpected fault
            log.exception("turn failed")
            failure = TroupeError("The persona failed to answer.")
        finally:
            # runs even when the caller hung up (the generator is closed): the turn is kept regardless
            outcome = loop.outcome if last is not None else loop.interrupted()
            result = TurnResult(
                turn_id=plan.turn_id,
                new_messages=tuple(outcome.new_messages),
                delta=outcome.delta,
                error_code=failure.code if failure else None,
                error_text=failure.message if failure else None,
                interrupted=last is None,
                ttft_ms=None if first is None else round((first - began) * 1000),
                duration_ms=round((time.perf_counter() - began) * 1000),
                # a turn built here: the session learns of it now
                session_id=plan.session_id if plan.built else "",
                input=plan.input if plan.built else (),
                base_version=plan.version if plan.built else None,
                trace=trace,
            )
            lent_for = request.persona if one_turn else None
            finishing = asyncio.ensure_future(self._finish(lease, plan, result, request.caller_id, copy, lent_for))
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)
            if span.is_recording():
                span.set_attributes({"troupe.persona": plan.persona, "troupe.built": plan.built,
                    "troupe.interrupted": result.interrupted, "troupe.finish_reason": outcome.finish_reason,
                })  # fmt: skip
                if failure is not None:
                    tracing.failed(span, failure.code)
                finishing.add_done_callback(lambda _: span.end())  # the turn's span ends once it is kept
        await finishing
        if failure is not None:
            yield Failed(text=failure.message, code=failure.code, status=failure.status)
        elif last is not None:
            yield last

    async def _finish(
        self, lease: SessionLease, plan: TurnPlan, result: TurnResult, caller_id: str, copy: SessionCopy,
        lent_for: str | None = None,
    ) -> None:  # fmt: skip
        """Hand the finished turn to its session; if that actor died mid-turn (or no longer holds the
        turn), keep the turn through the store: the reply the caller heard is in the transcript.
        `lent_for`: the persona of a one-turn session on a lent actor, which is free again once it
        acknowledges the turn."""
        died = False
        try:
            ack: TurnAck | None = await asyncio.wait_for(
                lease.handle.finish.remote(result), self.settings.actor_call_timeout_s
            )
        except RayActorError:
            ack, died = None, True
        except Exception:
            ack = None
        copy.kept(plan, result.new_messages, ack)
        kept_by = "door" if ack is None else "session"
        outcome = {"event": "turn.finished", "interrupted": result.interrupted, "error": result.error_code}
        log.info("turn finished", extra={**outcome, "kept_by": kept_by})
        if ack is not None:
            if lent_for is not None:
                self._lend_back(lease, lent_for)
            return
        try:
            store = await self.store()
            with tracing.within(result.trace):
                await store.keep_turn(
                    plan.session_id, plan.turn_id, plan.input, result.new_messages, interrupted=result.interrupted,
                    caller_id=caller_id, persona=plan.persona, process_id=lease.process_id,
                    stats=TurnStats.of(result, plan.persona),
                )  # fmt: skip
            self.orchestrator.report.remote(lease.process_id, result.delta)
        except Exception:
            log.warning("the turn %s could not be kept", plan.turn_id, exc_info=True)
        if died and lent_for is None:  # the caller's session gets its next actor now (a warm one binds in milliseconds)
            healing = asyncio.ensure_future(self._replace(lease, caller_id, plan.persona))
            self._finishing.add(healing)
            healing.add_done_callback(self._finishing.discard)
            await asyncio.wait({healing}, timeout=2.0)

    async def _replace(self, lease: SessionLease, caller_id: str, persona: str) -> None:
        try:
            await self.lease(caller_id, persona, failed=lease)
        except Exception:
            log.info("the session of a turn whose actor died will be started on its next turn", exc_info=True)

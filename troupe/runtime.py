"""The driver side of troupe: start (or join) Ray, start the orchestrator, and talk to sessions.

`Runtime` is what the CLI and the door hold. `SessionClient` resolves a caller's session once, caches
its handle, and runs each turn in the door: the session assembles it, the model streams straight to the
caller, and the finished turn goes back to the session. The orchestrator stays off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.exceptions import RayActorError

from troupe.actors.agent import AgentLoop, budget_guard
from troupe.actors.messages import TurnEvent, TurnPlan, TurnRequest, TurnResult
from troupe.actors.models import ModelFactory
from troupe.actors.orchestrator import ORCHESTRATOR_NAME, Orchestrator, SessionLease
from troupe.actors.persona_file import PersonaCatalog, load_personas
from troupe.actors.session import STALE
from troupe.chat_model import ToolCall, ToolSpec
from troupe.config.settings import Settings
from troupe.errors import ConfigError, TroupeError

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
            kwargs.update(include_dashboard=False, num_cpus=os.cpu_count() or 2)
            if settings.door == "serve" and settings.serve_direct_ingress:
                os.environ.update(serve_direct_ingress_env(settings))
        # actors on other nodes rebuild the same settings from these variables
        kwargs["runtime_env"] = {"env_vars": settings.env_for_workers()}
        ray.init(**kwargs)
    return time.perf_counter() - began


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
        options: dict[str, Any] = {"name": ORCHESTRATOR_NAME, "namespace": settings.namespace}
        if detached:
            options["lifetime"] = "detached"
        orchestrator = Orchestrator.options(**options).remote(settings, catalog)  # type: ignore[attr-defined]
        runtime = cls(settings, catalog, orchestrator)
        runtime.starting = orchestrator.start.remote(defer_rest)
        return runtime

    def wait_started(self) -> dict[str, Any]:
        """Wait for the orchestrator's start-up; on failure, leave nothing behind and raise troupe's error."""
        try:
            status: dict[str, Any] = ray.get(self.starting)
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

    def __init__(self, session: Any, plan: TurnPlan) -> None:
        self.session = session
        self.plan = plan

    def specs(self) -> tuple[ToolSpec, ...]:
        return self.plan.own_tools

    async def run(self, call: ToolCall) -> str:
        result: str = await self.session.run_tool.remote(self.plan.turn_id, call)
        return result


class SessionClient:
    """Runs caller turns in the door. Holds session handles so only a caller's first turn visits the
    orchestrator; each turn then costs two calls to the session actor: `prepare` before the model
    speaks and `finish` once it has, and the reply streams from the model straight to the caller."""

    def __init__(self, orchestrator: Any, settings: Settings, catalog: PersonaCatalog) -> None:
        self.orchestrator = orchestrator
        self.settings = settings
        self.catalog = catalog
        self.models = ModelFactory(settings)
        self.leases: dict[tuple[str, str], SessionLease] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def lease(self, caller_id: str, persona: str, failed: SessionLease | None = None) -> SessionLease:
        key = (caller_id, persona.lower())
        lease = self.leases.get(key)
        if lease is not None and failed is None:
            return lease
        async with self._locks.setdefault(key, asyncio.Lock()):
            lease = self.leases.get(key)
            if lease is not None and (failed is None or lease.generation != failed.generation):
                return lease
            try:
                lease = await self.orchestrator.session_for.remote(
                    caller_id, persona, failed.generation if failed else None
                )
            except Exception as exc:
                raise _unwrap(exc) from None
            self.leases[key] = lease
            return lease

    def forget(self, caller_id: str, persona: str) -> None:
        self.leases.pop((caller_id, persona.lower()), None)

    async def _prepare(self, request: TurnRequest) -> tuple[SessionLease, TurnPlan | TurnEvent]:
        """Open the turn on the caller's session. If that actor died (or was released and reused), the
        turn goes to the caller's current session actor instead: the transcript is in the store."""
        lease = await self.lease(request.caller_id, request.persona)
        for attempt in range(3):
            try:
                plan: TurnPlan | TurnEvent = await lease.handle.prepare.remote(request)
            except RayActorError:
                lease = await self.lease(request.caller_id, request.persona, failed=lease)
                continue
            if isinstance(plan, TurnEvent) and plan.error_code == STALE and attempt < 2:
                self.forget(request.caller_id, request.persona)
                lease = await self.lease(request.caller_id, request.persona)
                continue
            return lease, plan
        unavailable = TurnEvent(
            kind="error", text="The session is restarting; please try again.", error_code="session_restarted",
            error_status=503,
        )  # fmt: skip
        return lease, unavailable

    async def turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        """Stream a turn: the session assembles it, the model's reply streams from here, and the
        finished turn is in the store before the stream's last event (the `done` or `error`)."""
        lease, plan = await self._prepare(request)
        if isinstance(plan, TurnEvent):
            yield plan
            return
        loop = AgentLoop(
            speaker=plan.persona,
            model=self.models.for_persona(self.catalog.get(plan.persona)),
            model_name=plan.model_name,
            toolbox=RemoteTools(lease.handle, plan),
            max_iterations=plan.max_iterations,
            temperature=plan.temperature,
            budget_guard=budget_guard(plan.allowance),
        )
        last: TurnEvent | None = None
        failure: TroupeError | None = None
        try:
            async for event in loop.run(
                plan.messages,
                client_tools=request.client_tools,
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                stop=request.stop,
            ):
                if event.kind == "done":
                    last = event
                    break
                yield event
        except TroupeError as exc:
            failure = exc
        except Exception:  # never leave a caller hanging on an unexpected fault
            log.exception("turn failed")
            failure = TroupeError("The persona failed to answer.")
        finally:
            # a caller who hung up mid-reply still has their words kept
            outcome = loop.outcome
            result = TurnResult(
                turn_id=plan.turn_id,
                new_messages=tuple(outcome.new_messages),
                delta=outcome.delta,
                error_code=failure.code if failure else None,
                error_text=failure.message if failure else None,
            )
            finishing = lease.handle.finish.remote(result)
        try:
            await finishing
        except Exception:
            log.warning("the session could not keep turn %s", plan.turn_id, exc_info=True)
        if failure is not None:
            yield TurnEvent(kind="error", text=failure.message, error_code=failure.code, error_status=failure.status)
        elif last is not None:
            yield last

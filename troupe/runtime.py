"""The driver side of troupe: start (or join) Ray, start the orchestrator, and talk to sessions.

`Runtime` is what the CLI and the door hold. `SessionClient` resolves a caller's session once, caches
its handle, and streams turns straight from the session actor, keeping the orchestrator off the hot path.
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

from troupe.actors.messages import TurnEvent, TurnRequest
from troupe.actors.orchestrator import ORCHESTRATOR_NAME, Orchestrator, SessionLease
from troupe.actors.persona_file import PersonaCatalog, load_personas
from troupe.actors.session import STALE
from troupe.config.settings import Settings
from troupe.errors import ConfigError, TroupeError

log = logging.getLogger(__name__)


def init_ray(settings: Settings) -> float:
    """Start a local Ray (or join RAY_ADDRESS). Returns the seconds it took."""
    began = time.perf_counter()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"namespace": settings.namespace, "log_to_driver": True}
        if settings.ray_address:
            kwargs["address"] = settings.ray_address
        else:
            kwargs.update(include_dashboard=False, num_cpus=os.cpu_count() or 2)
        # actors on other nodes rebuild the same settings from these variables
        kwargs["runtime_env"] = {"env_vars": settings.env_for_workers()}
        ray.init(**kwargs)
    return time.perf_counter() - began


class Runtime:
    def __init__(self, settings: Settings, catalog: PersonaCatalog, orchestrator: Any) -> None:
        self.settings = settings
        self.catalog = catalog
        self.orchestrator = orchestrator

    @classmethod
    def start(cls, settings: Settings, *, catalog: PersonaCatalog | None = None, detached: bool = False) -> Runtime:
        """Start every actor. Raises ConfigError / StoreUnavailable with a clear message on bad set-up."""
        catalog = catalog or load_personas(settings.personas_dir)
        init_ray(settings)
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
        try:
            ray.get(orchestrator.start.remote())
        except Exception as exc:
            ray.kill(orchestrator, no_restart=True)
            raise _unwrap(exc) from None
        return cls(settings, catalog, orchestrator)

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

    def client(self) -> SessionClient:
        return SessionClient(self.orchestrator)


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps an actor's exception; give callers troupe's own error back."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TroupeError):
        return cause
    if isinstance(exc, TroupeError):
        return exc
    return exc


class SessionClient:
    """Streams caller turns. Holds session handles so only a caller's first turn visits the orchestrator."""

    def __init__(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator
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

    async def turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        """Stream a turn. If the session actor died (or was released) before saying anything, the turn
        goes to the caller's current session actor instead; the transcript is in the store either way."""
        lease = await self.lease(request.caller_id, request.persona)
        for attempt in range(3):
            started = False
            try:
                stale = False
                async for ref in lease.handle.turn.options(num_returns="streaming").remote(request):
                    batch: list[TurnEvent] = await ref
                    for event in batch:
                        if not started and event.kind == "error" and event.error_code == STALE and attempt < 2:
                            stale = True
                            break
                        started = True
                        yield event
                    if stale:
                        break
                else:
                    return
                self.forget(request.caller_id, request.persona)
                lease = await self.lease(request.caller_id, request.persona)
            except RayActorError:
                if started or attempt == 2:
                    self.forget(request.caller_id, request.persona)
                    yield TurnEvent(
                        kind="error",
                        text="The session restarted mid-reply; please say that again.",
                        error_code="session_restarted",
                        error_status=503,
                    )
                    return
                lease = await self.lease(request.caller_id, request.persona, failed=lease)

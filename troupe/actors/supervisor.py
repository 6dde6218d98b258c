"""The supervisor: the orchestrator's supervised children, how they are watched, and what happens when
one dies (the policy maths is in `supervision.py`). It knows nothing of the orchestrator: it is given the
registry, how many actors may start at once, and hooks for kinds that restart or fail in their own way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from troupe.actors.registry import Registry
from troupe.core.messages import ProcessInfo
from troupe.core.supervision import Decision, Policy, decide

log = logging.getLogger(__name__)

Factory = Callable[[], Awaitable[Any]]


@dataclass
class Child:
    """A supervised actor: how to (re)create it and what happened to it."""

    process_id: str
    group: str  # siblings restarted together under restart_all
    policy: Policy
    factory: Factory  # creates and initialises a fresh actor, returns its handle
    handle: Any = None
    generation: int = 0
    restart_times: list[float] = field(default_factory=list)
    watcher: asyncio.Task[None] | None = None
    watching: Any = None  # the pending `watch()` call on the actor (an ObjectRef), cancelled with the watch
    stopping: bool = False


def kill_actor(handle: Any) -> None:
    """Stop an actor for good (no Ray restart); a handle that is gone already is fine."""
    try:
        ray.kill(handle, no_restart=True)
    except Exception:
        pass


def _own_factory(child: Child, info: ProcessInfo) -> Factory:
    return child.factory


def _never_fails(info: ProcessInfo) -> str | None:
    return None


class Supervisor:
    """Children by process id, each watched through its actor's `watch()` (which returns, or raises
    `RayActorError`, when the actor dies). `restart_factory` says how a child that died is created again
    (by default its own factory); `failure_of` says why a freshly started child cannot run (it is then
    marked failed and not watched) or None. `kill` stops an actor (`ray.kill` by default)."""

    def __init__(
        self,
        registry: Registry,
        spawn_slots: int,
        restart_factory: Callable[[Child, ProcessInfo], Factory] = _own_factory,
        failure_of: Callable[[ProcessInfo], str | None] = _never_fails,
        kill: Callable[[Any], None] = kill_actor,
    ) -> None:
        self.registry = registry
        self.children: dict[str, Child] = {}
        self.spawning = asyncio.Semaphore(max(1, spawn_slots))
        self.restart_factory = restart_factory
        self.failure_of = failure_of
        self.kill = kill

    async def supervise(self, info: ProcessInfo, group: str, policy: Policy, factory: Factory) -> Child:
        """Register a process, start its actor and watch it. A child that fails to start is marked
        failed and the error raised."""
        pid = self.registry.register(info)
        child = Child(process_id=pid, group=group, policy=policy, factory=factory)
        self.children[pid] = child
        try:
            child.handle = await self.spawn(factory)
        except Exception as exc:
            self.registry.set_status(pid, "failed", f"failed to start: {exc}")
            raise
        failure = self.failure_of(info)
        if failure:
            # it cannot run here: say so and keep saying so, rather than restart it forever
            self.registry.set_status(pid, "failed", failure)
            return child
        self.registry.set_status(pid, "running")
        self.watch(child)
        return child

    def watch(self, child: Child, on_death: Callable[[int], Awaitable[None]] | None = None) -> None:
        """Wait on the child's `watch()`; when it dies (and was not stopped on purpose), handle it.
        `on_death` gets the generation that died; by default the child's supervision policy applies."""
        generation = child.generation
        handle = child.handle

        call = child.watching = handle.watch.remote()

        async def watcher() -> None:
            try:
                await call
            except RayActorError:
                pass
            except asyncio.CancelledError:
                return
            if child.stopping:
                return
            if on_death is not None:
                await on_death(generation)
            elif child.generation == generation:
                await self._on_death(child)

        child.watcher = asyncio.ensure_future(watcher())

    def unwatch(self, child: Child) -> None:
        """The child is being stopped on purpose: its death is not to be handled."""
        child.stopping = True
        if child.watcher:
            child.watcher.cancel()
        # the call itself waits on the actor until it dies: an actor let go and taken again (a pooled
        # session serves caller after caller) would otherwise hold one more call a binding, and an async
        # actor takes at most 1,000 at once
        call, child.watching = child.watching, None
        if isinstance(call, ray.ObjectRef):
            with contextlib.suppress(Exception):  # an actor gone already has nothing to cancel
                ray.cancel(call)
        elif isinstance(call, asyncio.Future):
            call.cancel()

    async def _on_death(self, child: Child) -> None:
        now = time.monotonic()
        decision: Decision = decide(child.policy, child.restart_times, now)
        info = self.registry.processes[child.process_id]
        log.warning("%s %s died: %s", info.kind, info.name, decision.reason)
        self.registry.emit(
            "process.died",
            process=child.process_id,
            agent=info.agent,
            kind=info.kind,
            name=info.name,
            decision=decision.action,
            reason=decision.reason,
        )
        if decision.action in ("stop", "escalate"):
            self.registry.set_status(child.process_id, "failed", f"died; {decision.reason}")
            if decision.action == "escalate":
                # the orchestrator is the top of the tree: escalation ends with the operator
                self.registry.emit(
                    "process.escalated", process=child.process_id, agent=info.agent, reason=decision.reason
                )
            self.children.pop(child.process_id, None)
            return
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        targets = [child]
        if decision.action == "restart_all":
            targets += [c for c in self.children.values() if c.group == child.group and c is not child]
        for target in targets:
            await self._restart(target, now)

    async def _restart(self, child: Child, now: float) -> None:
        child.generation += 1
        child.restart_times.append(now)
        if child.watcher and child.handle is not None:
            self.kill(child.handle)
        info = self.registry.processes[child.process_id]
        factory = self.restart_factory(child, info)
        try:
            child.handle = await self.spawn(factory)
        except Exception as exc:
            # a replacement that cannot start (its node gone too, say) is one more death: the policy
            # decides whether to try again, and its restart limit ends the tries
            log.warning("restarting %s failed: %s", info.name, exc)
            self.registry.emit("process.restart_failed", process=child.process_id, agent=info.agent, reason=str(exc))
            await self._on_death(child)
            return
        failure = self.failure_of(info)
        if failure:
            self.registry.set_status(child.process_id, "failed", failure)  # it cannot run here: stop trying
            return
        self.registry.update(child.process_id, restarts=info.restarts + 1)
        self.registry.set_status(child.process_id, "running")
        self.registry.emit("process.restarted", process=child.process_id, agent=info.agent, restarts=info.restarts + 1)
        self.watch(child)

    async def spawn(self, factory: Factory) -> Any:
        """Start an actor process, at most one per core at a time: Ray starts a worker process for each
        actor, and more starting at once than there are cores only makes every one of them slower."""
        async with self.spawning:
            return await factory()

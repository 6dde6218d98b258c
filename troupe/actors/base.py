"""What every troupe actor shares: its settings and catalog, the store, and the methods the supervisor
uses to watch it (`watch` never returns while the actor lives; its ref fails the moment it dies)."""

from __future__ import annotations

import asyncio
import os
import resource
from typing import Any

import ray

from troupe.clients import tracing
from troupe.config.settings import Settings
from troupe.core import logs
from troupe.core.persona_file import PersonaCatalog
from troupe.store import Store


def _ray_actor_kind() -> str | None:
    """The kind of the Ray actor this process hosts, by its class (the orchestrator's, a Serve replica's),
    for log lines of actors that do not name themselves; None while it hosts none."""
    if not ray.is_initialized():  # the runtime context would start a Ray, even from inside ray.init's logging
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    return logs.kind_of(context.current_actor._ray_actor_creation_function_descriptor.class_name)


logs.set_kind_resolver(_ray_actor_kind)


class ActorBase:
    def __init__(self, settings: Settings, catalog: PersonaCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        tracing.setup(settings, type(self).__name__.removesuffix("Actor").lower())  # once per process
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self._forever = asyncio.Event()
        self._watchers = 0  # supervisors' calls waiting on `watch` (one at a time, whoever holds the actor)
        # this process's log lines name its kind and its troupe process id (a pooled session's changes)
        logs.identify(logs.kind_of(type(self).__name__), lambda: getattr(self, "process_id", None))
        logs.MASK.add(logs.secret_values(settings))

    async def store(self) -> Store:
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    # migrations are the orchestrator's job; other actors only connect
                    self._store = await Store.open_for(self.settings, type(self).__name__.removesuffix("Actor").lower())
        return self._store

    async def watch(self) -> None:
        self._watchers += 1
        try:
            await self._forever.wait()
        finally:
            self._watchers -= 1

    async def ping(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        node = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "max_rss_mb": round(usage.ru_maxrss / 1024, 1), "node": node,
                "watchers": self._watchers}  # fmt: skip

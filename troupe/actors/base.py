"""What every troupe actor shares: its settings and catalog, the store, and the methods the supervisor
uses to watch it (`watch` never returns while the actor lives; its ref fails the moment it dies)."""

from __future__ import annotations

import asyncio
import os
import resource
from typing import Any

from troupe.clients import tracing
from troupe.config.settings import Settings
from troupe.core.persona_file import PersonaCatalog
from troupe.store import Store


class ActorBase:
    def __init__(self, settings: Settings, catalog: PersonaCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        tracing.setup(settings, type(self).__name__.removesuffix("Actor").lower())  # once per process
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self._forever = asyncio.Event()

    async def store(self) -> Store:
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    # migrations are the orchestrator's job; other actors only connect
                    self._store = await Store.open_for(self.settings, type(self).__name__.removesuffix("Actor").lower())
        return self._store

    async def watch(self) -> None:
        await self._forever.wait()

    async def ping(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"pid": os.getpid(), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}

"""Which caller a platform's call id belongs to, the same on every door replica: a bounded local cache in
front of the store, whose rows expire. A replica that never saw the call asks the store once."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

KEPT = 10_000  # call ids cached per replica
TTL_S = 24 * 3600.0  # a call id names its caller for a day


class KnownCalls:
    def __init__(self, store: Callable[[], Awaitable[Any]], kept: int = KEPT, ttl_s: float = TTL_S) -> None:
        self._store = store
        self._local: OrderedDict[str, str] = OrderedDict()
        self._kept = kept
        self._ttl_s = ttl_s
        self._writes: set[asyncio.Task[Any]] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._local

    def __getitem__(self, key: str) -> str:
        return self._local[key]

    def __len__(self) -> int:
        return len(self._local)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._local.get(key, default)

    def _cache(self, key: str, caller: str) -> None:
        self._local[key] = caller
        self._local.move_to_end(key)
        while len(self._local) > self._kept:
            self._local.popitem(last=False)

    def __setitem__(self, key: str, caller: str) -> None:
        """Learn a mapping (a request carried both the call id and the number); the store hears of it
        in the background, once per change."""
        if self._local.get(key) == caller:
            self._local.move_to_end(key)
            return
        self._cache(key, caller)
        task = asyncio.ensure_future(self._write(key, caller))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def setdefault(self, key: str, caller: str) -> str:
        if key not in self._local:
            self[key] = caller
        return self._local[key]

    async def _write(self, key: str, caller: str) -> None:
        try:
            await (await self._store()).remember_call_id(key, caller, self._ttl_s)
        except Exception:
            log.warning("could not record call %s in the store", key, exc_info=True)

    async def load(self, key: str) -> None:
        """Before resolving a request that carries only a call id: what another replica learned."""
        if key in self._local:
            return
        try:
            caller = await (await self._store()).caller_for_call(key)
        except Exception:
            log.warning("could not look call %s up in the store", key, exc_info=True)
            return
        if caller is not None:
            self._cache(key, caller)

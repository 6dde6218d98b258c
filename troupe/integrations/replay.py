"""Signed webhook deliveries already seen, so a captured one sent again is refused: a bounded, expiring
record on each door replica, in front of the store's seen events (shared by every replica)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from troupe.core.errors import TroupeError

log = logging.getLogger(__name__)

KEPT = 50_000  # signatures remembered per replica
PRUNE_EVERY_S = 600.0  # how often a replica drops the store's signatures that have outlived their use


class Replayed(TroupeError):
    """A genuine signed delivery received before. Not an authentication failure (a 401 would send someone
    hunting for a wrong secret) but a conflict with what was already received; platforms do not retry a 4xx."""

    status = 409
    type = "invalid_request_error"
    code = "replayed_webhook"


class SeenSignatures:
    """Signatures seen within the last `ttl_s`. A webhook is only accepted while its signed timestamp is
    within the tolerance, so a signature need not be remembered for longer than twice that."""

    def __init__(self, ttl_s: float, kept: int = KEPT, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._kept = kept
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> when it may be forgotten

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, signature: str) -> bool:
        """True the first time a signature is offered (and it is remembered); False while it is remembered."""
        now = self._clock()
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)  # one ttl for all: the oldest expire first
        if signature in self._seen:
            return False
        self._seen[signature] = now + self._ttl_s
        while len(self._seen) > self._kept:
            self._seen.popitem(last=False)  # a flood evicts early; the store still knows them
        return True


class ReplayGuard:
    """The first delivery of a signed message passes; the same signed message again does not, on this
    replica (the local record) or on any other (the store's `claim_event`, atomic across replicas)."""

    def __init__(self, store: Callable[[], Awaitable[Any]], ttl_s: float, kept: int = KEPT) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._local = SeenSignatures(ttl_s, kept)
        self._pruned: dict[str, float] = {}  # source -> when its old signatures were last dropped

    async def first_delivery(self, source: str, signature: str) -> bool:
        if not self._local.first_time(f"{source}:{signature}"):
            return False
        try:
            store = await self._store()
            if time.monotonic() - self._pruned.get(source, float("-inf")) > PRUNE_EVERY_S:
                # the store's table never only grows: signatures older than their use are dropped
                self._pruned[source] = time.monotonic()
                await store.forget_events(f"{source}-signed", timedelta(seconds=self._ttl_s))
            return bool(await store.claim_event(f"{source}-signed", signature))
        except Exception as exc:
            # the signature and its timestamp are verified and this replica's record still refuses a
            # replay here: a store that is briefly down should not cut off a live call
            log.warning("%s: replays checked on this replica only, the store is unavailable (%s)",
                        source, type(exc).__name__)  # fmt: skip
            return True


def replay_guard(state: Any) -> ReplayGuard:
    """The app's guard (one per app, shared by its webhook routes), made on first use."""
    guard: ReplayGuard | None = getattr(state, "replays", None)
    if guard is None:
        gateway = state.gateway
        guard = state.replays = ReplayGuard(gateway.store, ttl_s=2.0 * gateway.settings.webhook_tolerance_s)
    return guard

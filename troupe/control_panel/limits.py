"""The door's rate limits: a token bucket per API key, per client address and per caller.
A request is charged against every scope it has and refused, with a wait, if any of them is empty."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from troupe.core.caller import is_anonymous
from troupe.core.errors import TroupeError

REFILL_SECONDS = 60.0  # a bucket holds a minute's worth, so any bucket is full again after a minute idle
SHARED = 10  # a key or an address serves many callers
SCOPES = {"key": "API key", "address": "address", "caller": "caller"}


class RateLimited(TroupeError):
    """Too many requests; `retry_after` is the whole seconds until the request would be taken."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, param: str | None = None, retry_after: int = 60) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def __reduce__(self) -> Any:
        return (type(self), (self.message,), {"param": self.param, "retry_after": self.retry_after})


class RateLimiter:
    """`per_minute` requests per caller, `per_key_minute` per API key and `per_address_minute` per client
    address; the last two default to 10x per_minute, since a key or an address serves many callers.

    Each bucket allows a burst of its limit, then refills continuously at limit/60 a second. A limit <= 0
    turns its scope off, so per_minute <= 0 with the defaults turns limiting off. An anonymous caller id
    ("anon-...") has no bucket of its own: its key and address limit it. Memory is bounded: a bucket idle
    for a minute is full again and is dropped; past `max_entries` the least recently used bucket goes.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        per_key_minute: int | None = None,
        per_address_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self.limits = {
            "key": float(SHARED * per_minute if per_key_minute is None else per_key_minute),
            "address": float(SHARED * per_minute if per_address_minute is None else per_address_minute),
            "caller": float(per_minute),
        }
        self.clock = clock
        self.max_entries = max_entries
        # (scope, id) -> (tokens, when counted), least recently used first
        self.buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def check(self, caller: str | None = None, *, key: str | None = None, address: str | None = None) -> None:
        """Take one request from each of its buckets, or raise RateLimited and take none. A refused
        request creates no bucket, so a client inventing caller ids adds them only as fast as its key's
        and address's buckets let it."""
        if caller is not None and is_anonymous(caller):
            caller = None
        ids = {"key": key, "address": _network(address) if address else None, "caller": caller}
        names = [(scope, id_) for scope, id_ in ids.items() if id_ and self.limits[scope] > 0]
        if not names:
            return
        now = self.clock()
        self._expire(now)
        levels = [(name, self._tokens(name, now)) for name in names]
        waits = [((1 - tokens) * REFILL_SECONDS / self.limits[name[0]], name[0]) for name, tokens in levels]
        wait, scope = max(waits)
        for name, tokens in levels:
            if wait <= 0:
                self._store(name, tokens - 1, now)
            elif name in self.buckets:
                self._store(name, tokens, now)  # a hammering client stays the most recently used
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(f"Too many requests for this {SCOPES[scope]}; retry in {seconds} s.", retry_after=seconds)

    def _tokens(self, name: tuple[str, str], now: float) -> float:
        limit = self.limits[name[0]]
        tokens, counted = self.buckets.get(name, (limit, now))
        return min(limit, tokens + (now - counted) * limit / REFILL_SECONDS)

    def _store(self, name: tuple[str, str], tokens: float, now: float) -> None:
        if name not in self.buckets and len(self.buckets) >= self.max_entries:
            self.buckets.popitem(last=False)  # the longest idle; never everyone's at once
        self.buckets[name] = (tokens, now)
        self.buckets.move_to_end(name)

    def _expire(self, now: float) -> None:
        """Drops buckets idle for a minute: full again, they carry nothing."""
        while self.buckets:
            name, (_, counted) = next(iter(self.buckets.items()))
            if now - counted < REFILL_SECONDS:
                return
            del self.buckets[name]


def _network(address: str) -> str:
    """An IPv6 client is limited by its /64, which one host or home usually holds whole."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)

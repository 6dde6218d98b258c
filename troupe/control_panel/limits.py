"""Per-caller rate limiting: a token bucket per caller id, refilled continuously."""

from __future__ import annotations

import time

from troupe.errors import TroupeError


class RateLimited(TroupeError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: object = time.monotonic, max_callers: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_callers = max_callers
        self.buckets: dict[str, tuple[float, float]] = {}

    def check(self, caller: str) -> None:
        """Take one request from the caller's bucket or raise RateLimited (429, Retry-After)."""
        if self.capacity <= 0:
            return
        now = self.clock()  # type: ignore[operator]
        tokens, last = self.buckets.get(caller, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = (1 - tokens) / self.rate
            raise RateLimited(f"Too many requests from {caller}; retry in {wait:.0f} s.")
        if len(self.buckets) >= self.max_callers and caller not in self.buckets:
            self.buckets.clear()  # bounded memory: an attacker cycling ids cannot grow this forever
        self.buckets[caller] = (tokens - 1, now)

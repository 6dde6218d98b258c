"""Short-lived, single-use tickets for the voice WebSocket: a browser cannot set an Authorization header
on a WebSocket, and a key in its URL would sit in logs and history, so it trades its key for a ticket.

The book is plain logic and in-process: a ticket is redeemed on the door replica that issued it."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

TTL_S = 60.0  # long enough to open a socket right after asking; short enough that a leaked one is stale
KEPT = 10_000  # outstanding tickets per replica; past this the oldest are dropped


class TicketBook:
    """Tickets issued and not yet redeemed, each for a subject (the key or role it was issued to)."""

    def __init__(self, ttl_s: float = TTL_S, kept: int = KEPT, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._kept = kept
        self._clock = clock
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()  # ticket -> (subject, expires)

    def __len__(self) -> int:
        return len(self._open)

    def issue(self, subject: str) -> str:
        """A new random ticket for `subject`, valid for `ttl_s` and for one redemption."""
        now = self._clock()
        self._drop_expired(now)
        ticket = secrets.token_urlsafe(32)
        self._open[ticket] = (subject, now + self._ttl_s)
        while len(self._open) > self._kept:
            self._open.popitem(last=False)
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """The subject a ticket was issued to, the first time it is redeemed within its lifetime; else None."""
        entry = self._open.pop(ticket, None)
        if entry is None:
            return None
        subject, expires = entry
        return subject if self._clock() <= expires else None

    def _drop_expired(self, now: float) -> None:
        # every ticket lives as long, so the oldest are first to expire
        while self._open:
            _, (_, expires) = next(iter(self._open.items()))
            if expires >= now:
                return
            self._open.popitem(last=False)

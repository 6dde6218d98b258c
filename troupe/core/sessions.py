"""The session directory: which actor holds which live conversation, least recently used first, and how
big the warm pool should be. Plain logic; the orchestrator actor holds one and does the actor calls."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Key = tuple[str, str]  # (caller id, persona key)
QUIET_S = 60.0  # the peak of live sessions this recent sizes the pool; quiet for longer, it is the floor


@dataclass
class SessionSlot:
    """A live conversation and the actor holding it, or an actor lent to a door for one-turn sessions
    (callers with no identity), one after another."""

    caller_id: str
    persona: str
    process_id: str
    session_id: str
    last_active: float
    persona_key: str = ""  # the persona's key in the catalog (its name by default)
    lent: bool = False  # an actor lent to a door for one-turn sessions, one after another (`caller_id`: the lane)

    @property
    def key(self) -> Key:
        return (self.caller_id, self.persona_key or self.persona)


class SessionDirectory:
    def __init__(self, max_sessions: int, pool_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.pool_min = pool_min
        self.clock = clock
        self._slots: OrderedDict[Key, SessionSlot] = OrderedDict()
        self._locks: dict[Key, asyncio.Lock] = {}
        self.opening = 0  # sessions being opened right now
        self._peaks: deque[tuple[float, int]] = deque()  # (when, sessions live then)

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[SessionSlot]:
        return iter(list(self._slots.values()))

    def conversations(self) -> list[SessionSlot]:
        """The live conversations: every slot but the actors lent for one-turn sessions."""
        return [slot for slot in self._slots.values() if not slot.lent]

    def get(self, key: Key) -> SessionSlot | None:
        return self._slots.get(key)

    def add(self, key: Key, slot: SessionSlot) -> None:
        self._slots[key] = slot
        self._slots.move_to_end(key)
        self._peaks.append((self.clock(), len(self._slots)))

    def remove(self, key: Key, slot: SessionSlot | None = None) -> SessionSlot | None:
        """Forget a slot (only `slot`, when given: a newer one under the same key stays)."""
        current = self._slots.get(key)
        if current is None or (slot is not None and current is not slot):
            return None
        del self._slots[key]
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        return current

    def touch(self, key: Key) -> None:
        slot = self._slots.get(key)
        if slot is not None:
            slot.last_active = self.clock()
            self._slots.move_to_end(key)

    def lock(self, key: Key) -> asyncio.Lock:
        """One caller's session is resolved one request at a time."""
        return self._locks.setdefault(key, asyncio.Lock())

    def settle(self, key: Key) -> None:
        """Drop the key's lock once nobody holds it and no slot needs it: the table never only grows."""
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and key not in self._slots:
            del self._locks[key]

    @property
    def full(self) -> bool:
        return len(self._slots) + self.opening >= self.max_sessions

    def reserve(self) -> None:
        """A session is being opened (its actor bound): it counts against the cap from now on, so
        callers arriving together cannot all pass the check before any of them is in the directory."""
        self.opening += 1
        # demand is callers live plus callers waiting for an actor: that is what the next burst wants
        self._peaks.append((self.clock(), len(self._slots) + self.opening))

    def unreserve(self) -> None:
        self.opening -= 1

    def eviction_order(self) -> list[SessionSlot]:
        """Who makes room for a new caller at capacity: actors lent for one-turn sessions (they hold no
        conversation between turns), then identified sessions, least recently used first."""
        return sorted(self._slots.values(), key=lambda slot: not slot.lent)  # stable: least recent first

    def idle(self, timeout_s: float) -> list[SessionSlot]:
        """Sessions with no turn for `timeout_s`, and lent actors with none reported for as long."""
        now = self.clock()
        return [slot for slot in self._slots.values() if now - slot.last_active >= timeout_s]

    def _peak(self) -> int:
        """The most sessions live at once in the last QUIET_S (sampled whenever one opens)."""
        now = self.clock()
        while self._peaks and now - self._peaks[0][0] > QUIET_S:
            self._peaks.popleft()
        return max((live for _, live in self._peaks), default=0)

    def actors_target(self) -> int:
        """Session actors to have in all, live and free: the recent peak of live sessions plus the free
        floor, within the cap. So the actors follow demand: a burst's are kept for the next one, and they
        shrink back to the floor once it is quiet."""
        in_use = len(self._slots) + self.opening
        return min(max(self._peak(), in_use) + self.pool_min, self.max_sessions + self.pool_min)

    def pool_target(self, free: int) -> int:
        """How many more free actors to start, given `free` in the pool (and starting)."""
        return max(0, self.actors_target() - (len(self._slots) + self.opening + free))

    def pool_surplus(self, free: int) -> int:
        """How many free actors are more than demand wants (they are stopped)."""
        return max(0, len(self._slots) + self.opening + free - self.actors_target())

"""The control panel's charts of the last hour and the last day, kept in troupe itself: a ring buffer of
minute buckets counting the turns the store keeps and the gauges the orchestrator samples. Plain logic."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

STEP_S = 60  # one bucket per minute
KEEP = 24 * 60  # buckets kept: a day
TTFT_BOUNDS_MS = (25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)
# A view's points: (how many, seconds each). The day's points start on the clock's 10-minute marks, so a
# chart refreshed a minute later keeps its points where they were.
WINDOWS = {"hour": (60, STEP_S), "day": (144, 10 * STEP_S)}

Window = Literal["hour", "day"]


class TurnLike(Protocol):
    """What a turn must carry to be counted (the store's TurnRecord has it)."""

    @property
    def persona(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def ttft_ms(self) -> int | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def interrupted(self) -> bool: ...
    @property
    def error_code(self) -> str | None: ...


@dataclass
class _PersonaCounts:
    """One persona's figures over a bucket (or a merge of buckets)."""

    turns: int = 0
    # turns per TTFT bound: ttft[i] counts ttft_ms <= TTFT_BOUNDS_MS[i] (and above the bound before);
    # the last slot counts the turns slower than every bound
    ttft: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BOUNDS_MS) + 1))
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def merge(self, other: _PersonaCounts) -> None:
        self.turns += other.turns
        self.ttft = [mine + theirs for mine, theirs in zip(self.ttft, other.ttft, strict=True)]
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd


@dataclass
class _Bucket:
    """A minute's counts and its last sampled gauges; also the sum of several minutes, for a view."""

    turns: int = 0
    personas: dict[str, _PersonaCounts] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    interrupted: int = 0
    sessions: int | None = None  # None: never sampled
    pool: int | None = None
    restarts: int = 0

    def merge(self, later: _Bucket) -> None:
        """Add `later`'s counts to these; its gauges replace these when it was sampled (the last sample wins)."""
        self.turns += later.turns
        for persona, counts in later.personas.items():
            self.personas.setdefault(persona, _PersonaCounts()).merge(counts)
        for code, n in later.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.interrupted += later.interrupted
        if later.sessions is not None:
            self.sessions, self.pool = later.sessions, later.pool
        self.restarts += later.restarts


def ttft_percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a TTFT histogram laid out as in `_PersonaCounts.ttft`, None if empty.

    An estimate within one bucket's width: the rank's bucket is found, and the value interpolated linearly
    between its lower bound (the bound before it, 0 for the first) and its upper bound. The overflow bucket
    has no upper bound, so a rank landing there reports the last bound.
    """
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    below = 0  # turns in the buckets before this one
    for i, upper in enumerate(TTFT_BOUNDS_MS):
        count = histogram[i]
        if below + count >= rank:  # the first such bucket has count > 0, since below < rank
            lower = TTFT_BOUNDS_MS[i - 1] if i else 0
            return round(lower + (upper - lower) * (rank - below) / count, 1)
        below += count
    return float(TTFT_BOUNDS_MS[-1])  # the rank is in the overflow bucket: its lower bound


def _minute(at: datetime) -> int:
    """The epoch second starting `at`'s minute."""
    if at.tzinfo is None:
        raise ValueError("Series needs aware datetimes (UTC); got a naive one")
    return int(at.timestamp()) // STEP_S * STEP_S


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Series:
    """The last KEEP minutes of turns and gauges, one bucket per minute, at most KEEP buckets.

    The window follows the newest bucket: a turn or sample more than KEEP minutes older than it is ignored,
    and when a newer minute arrives the buckets that fell out of the window are dropped.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}  # by the epoch second starting the minute
        self._newest: int | None = None  # the newest bucket's minute
        # The orchestrator's restart total at the last sample. Both start at 0 together (the orchestrator
        # owns its Series), so the first sample's total counts as that minute's restarts.
        self._restarted_total = 0

    def __len__(self) -> int:
        """How many minute buckets are held (never more than KEEP)."""
        return len(self._buckets)

    def add_turn(self, turn: TurnLike) -> None:
        """Count a turn in its minute's bucket. O(1) (dropping old buckets is amortised: each goes once)."""
        bucket = self._bucket(_minute(turn.at))
        if bucket is None:
            return
        bucket.turns += 1
        counts = bucket.personas.setdefault(turn.persona, _PersonaCounts())
        counts.turns += 1
        if turn.ttft_ms is not None:
            counts.ttft[bisect_left(TTFT_BOUNDS_MS, turn.ttft_ms)] += 1
        counts.input_tokens += turn.input_tokens
        counts.output_tokens += turn.output_tokens
        counts.cost_usd += turn.cost_usd
        if turn.error_code is not None:
            bucket.errors[turn.error_code] = bucket.errors.get(turn.error_code, 0) + 1
        if turn.interrupted:
            bucket.interrupted += 1

    def sample(self, at: datetime, *, sessions: int, pool: int, restarted_total: int) -> None:
        """Record the gauges at `at`: live sessions, free warm session actors, and the orchestrator's
        cumulative count of restarted actors, of which the minute keeps the increase since the last sample.
        The last sample of a minute gives its gauges; the increases of a minute's samples add up."""
        bucket = self._bucket(_minute(at))
        if bucket is None:
            return  # too old; the next sample's increase still counts these restarts
        if restarted_total < self._restarted_total:
            # A smaller total means the counter started again from 0 (the orchestrator restarted): the
            # restarts between the two samples are unknown, so count none and measure from the new total.
            increase = 0
        else:
            increase = restarted_total - self._restarted_total
        self._restarted_total = restarted_total
        bucket.sessions, bucket.pool = sessions, pool
        bucket.restarts += increase

    def view(self, window: Window, now: datetime, *, personas: Sequence[str] = ()) -> dict[str, Any]:
        """The chart data for the hour or the day up to `now`'s minute, ready for JSON.

        hour: 60 points of 60 s, the last one `now`'s minute. day: 144 points of 600 s on the clock's
        10-minute marks, the last one holding `now`'s minute. Each point sums its minutes (restarts too) and
        shows the last gauges sampled in it (None if none was). Every point is present, empty or not.
        `personas` lists names to show even without turns; the names seen in the window are added.
        O(points x personas).
        """
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; expected one of {sorted(WINDOWS)}")
        count, step_s = WINDOWS[window]
        last = _minute(now) // step_s * step_s
        starts = [last - (count - 1 - i) * step_s for i in range(count)]
        merged = [self._merge(range(start, start + step_s, STEP_S)) for start in starts]
        total = _Bucket()
        for point in merged:
            total.merge(point)
        names = sorted(set(personas) | set(total.personas))
        return {
            "window": window,
            "step_s": step_s,
            "start": _iso(starts[0]),
            "end": _iso(last + step_s),  # exclusive: the points cover [start, end)
            "personas": names,
            "points": [
                {
                    "t": _iso(start),
                    "turns": point.turns,
                    "errors": dict(point.errors),
                    "interrupted": point.interrupted,
                    **_per_persona(point, names),
                    "sessions": point.sessions,
                    "pool": point.pool,
                    "restarts": point.restarts,
                }
                for start, point in zip(starts, merged, strict=True)
            ],
            "totals": {"turns": total.turns, "errors": dict(total.errors), **_per_persona(total, names)},
        }

    def _bucket(self, minute: int) -> _Bucket | None:
        """The bucket of `minute`, made if needed; None if the minute is older than the window."""
        if self._newest is None or minute > self._newest:
            self._advance(minute)
        elif minute <= self._newest - KEEP * STEP_S:
            return None
        return self._buckets.setdefault(minute, _Bucket())

    def _advance(self, newest: int) -> None:
        """Make `newest` the newest minute and drop the buckets that leave the window."""
        if self._newest is not None:
            old_first = self._newest - (KEEP - 1) * STEP_S
            new_first = newest - (KEEP - 1) * STEP_S
            if new_first - old_first >= KEEP * STEP_S:
                self._buckets.clear()  # every bucket held is older than the new window
            else:
                for minute in range(old_first, new_first, STEP_S):
                    self._buckets.pop(minute, None)
        self._newest = newest

    def _merge(self, minutes: Iterable[int]) -> _Bucket:
        """The buckets of `minutes` (in time order) summed into one."""
        merged = _Bucket()
        for minute in minutes:
            bucket = self._buckets.get(minute)
            if bucket is not None:
                merged.merge(bucket)
        return merged


def _per_persona(bucket: _Bucket, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A point's per-persona fields, every name present (zeros and None for a persona without turns)."""
    empty = _PersonaCounts()
    counts = {name: bucket.personas.get(name, empty) for name in names}
    return {
        "turns_by_persona": {name: c.turns for name, c in counts.items()},
        "ttft_p50_ms": {name: ttft_percentile(c.ttft, 0.5) for name, c in counts.items()},
        "ttft_p95_ms": {name: ttft_percentile(c.ttft, 0.95) for name, c in counts.items()},
        "tokens": {name: c.input_tokens + c.output_tokens for name, c in counts.items()},
        "cost_usd": {name: round(c.cost_usd, 6) for name, c in counts.items()},
    }

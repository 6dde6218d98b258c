"""The life loops' clock: the real one, or a simulated one that starts at a given moment and runs
faster (so a demo or a test lives through days in seconds). Every actor that reads it agrees, because
the real moment the simulation starts travels with the settings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from troupe.config.settings import Settings


@dataclass(frozen=True)
class Clock:
    start: datetime | None = None
    speed: float = 1.0
    anchor: float = 0.0

    @classmethod
    def of(cls, settings: Settings) -> Clock:
        start = settings.life_clock_start
        if start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        return cls(start, settings.life_clock_speed, settings.life_clock_anchor)

    @property
    def simulated(self) -> bool:
        return self.start is not None

    def now(self) -> datetime:
        if self.start is None:
            return datetime.now(UTC)
        return self.start + timedelta(seconds=(time.time() - self.anchor) * self.speed)

    def real_seconds(self, simulated_seconds: float) -> float:
        """How long to really wait for `simulated_seconds` to pass on this clock."""
        return simulated_seconds / self.speed if self.simulated else simulated_seconds

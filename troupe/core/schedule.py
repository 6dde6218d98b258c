"""Schedule maths for life loops: cron expressions (5-field or `@once <ISO time>`) evaluated in a
persona's time zone, the slot that is due now, and the slots missed while troupe was down."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cron_descriptor import (
    CasingTypeEnum,
    ExpressionDescriptor,
    FormatException,
    MissingFieldException,
    Options,
    WrongArgumentException,
)
from croniter import croniter

ACTIVITIES = ("news", "goals", "team_check", "reflection", "journal", "post", "consolidation")

_BASE_SCHEDULE = {
    "news": "0 6,12,18 * * *",
    "goals": "0 9 * * *",
    "team_check": "0 10,14,17 * * *",
    "reflection": "0 15,21 * * *",
    "journal": "0 18,22 * * *",
}


def default_schedule(index: int) -> dict[str, str]:
    """Defaults staggered across personas: posts at persona-specific hours, the rest on the hour."""
    schedule = dict(_BASE_SCHEDULE)
    schedule["post"] = f"{(index * 11) % 60} {11 + index % 5},{16 + index % 3} * * *"
    # the sleep-time pass over memory: nightly, a few minutes apart per persona (they share one database)
    schedule["consolidation"] = f"{(index * 7) % 60} 3 * * *"
    return schedule


def validate(expression: str) -> str | None:
    """None if the expression is valid, else what is wrong with it."""
    expression = expression.strip()
    if expression.startswith("@once"):
        when = expression[len("@once") :].strip()
        try:
            datetime.fromisoformat(when)
        except ValueError:
            return f"'@once' needs an ISO time, e.g. '@once 2026-12-01T09:00', got {when!r}"
        return None
    if len(expression.split()) != 5:
        return f"a cron expression has 5 fields (minute hour day month weekday), got {expression!r}"
    if not croniter.is_valid(expression):
        return f"not a valid cron expression: {expression!r}"
    return None


@dataclass(frozen=True)
class Due:
    run: datetime | None  # the slot to run now, if any
    skipped: tuple[datetime, ...] = ()  # slots missed beyond the grace period


def _aware(moment: datetime, tz: ZoneInfo) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def latest_slot(expression: str, tz_name: str, now: datetime) -> datetime | None:
    """The most recent slot at or before `now` (UTC), or None."""
    tz = ZoneInfo(tz_name)
    if expression.startswith("@once"):
        when = _aware(datetime.fromisoformat(expression[5:].strip()), tz).astimezone(UTC)
        return when if when <= now else None
    local_now = now.astimezone(tz)
    itr = croniter(expression, local_now + timedelta(seconds=1))
    return itr.get_prev(datetime).astimezone(UTC)


def next_slot(expression: str, tz_name: str, now: datetime) -> datetime | None:
    tz = ZoneInfo(tz_name)
    if expression.startswith("@once"):
        when = _aware(datetime.fromisoformat(expression[5:].strip()), tz).astimezone(UTC)
        return when if when > now else None
    return croniter(expression, now.astimezone(tz)).get_next(datetime).astimezone(UTC)


def due(expression: str, tz_name: str, *, last_slot: datetime | None, now: datetime, grace: timedelta) -> Due:
    """Which slot (if any) should run now. Only the newest missed slot can run, and only within grace;
    an older one is reported as skipped, so a long outage never triggers a burst of catch-up runs."""
    slot = latest_slot(expression, tz_name, now)
    if slot is None or (last_slot is not None and slot <= last_slot):
        return Due(None)
    if now - slot <= grace:
        return Due(slot)
    return Due(None, (slot,))


_WORDS = Options(casing_type=CasingTypeEnum.Sentence, use_24hour_time_format=True, locale_code="en_US")


def describe(expression: str, tz_name: str) -> str:
    """A schedule in words, by cron-descriptor ('At 06:00, 12:00 and 18:00 (America/Los_Angeles)'); the
    expression itself where it has no reading."""
    expression = expression.strip()
    if expression.startswith("@once"):
        return f"Once, at {expression[5:].strip()} ({tz_name})"
    if validate(expression) is not None:  # cron-descriptor reads '61 9 * * *' as 'At 09:61'
        return f"Cron '{expression}' ({tz_name})"
    try:
        words = ExpressionDescriptor(expression, _WORDS).get_description()
    except (FormatException, MissingFieldException, WrongArgumentException):
        return f"Cron '{expression}' ({tz_name})"
    return f"{words} ({tz_name})"

"""What the store hands out: frozen pydantic *Record classes (never ORM objects), one per table
callers read, and _record, which builds one from a row with its datetimes made UTC."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from troupe.store.schema import _utc

# --- records handed out (frozen; never ORM objects)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class CallerRecord(_Record):
    caller_id: str
    phone: str | None
    name: str | None
    first_seen_at: datetime
    last_seen_at: datetime


class SessionRecord(_Record):
    id: str
    caller_id: str
    persona: str
    process_id: str
    status: str
    started_at: datetime
    last_active_at: datetime
    ended_at: datetime | None
    summary: str | None
    turns: int


class MemoryRecord(_Record):
    id: int
    persona: str
    subject: str
    kind: str
    content: str
    source: str
    created_at: datetime
    layer: str
    channel: str
    importance: float
    superseded_by: int | None
    superseded_at: datetime | None


class LifeRunRecord(_Record):
    persona: str
    activity: str
    slot: datetime | None
    status: str
    output: str
    process_id: str | None
    triggered_at: datetime
    finished_at: datetime | None


class ScheduleOverride(_Record):
    persona: str
    activity: str
    cron_expression: str | None
    is_paused: bool
    updated_at: datetime


class NewsReadRecord(_Record):
    persona: str
    item_id: str
    title: str
    url: str
    take: str
    score: float
    read_at: datetime


class PostRecord(_Record):
    id: int
    persona: str
    text: str
    status: str
    pending_targets: str
    delivered_targets: str
    attempts: int
    last_error: str
    created_at: datetime
    delivered_at: datetime | None


class JournalRecord(_Record):
    persona: str
    day: str
    text: str
    created_at: datetime


class BudgetEventRecord(_Record):
    scope: str
    subject: str
    limit_usd: float
    spent_usd: float
    created_at: datetime


class TurnRecord(_Record):
    id: int
    session_id: str
    turn_id: str
    persona: str
    at: datetime
    ttft_ms: int | None
    duration_ms: int
    input_tokens: int
    output_tokens: int
    tool_calls: int
    cost_usd: float
    interrupted: bool
    error_code: str | None


class MessageRecord(_Record):
    seq: int
    role: str
    content: str | None
    name: str | None
    tool_calls: str | None  # JSON, as the model sent them
    tool_call_id: str | None
    created_at: datetime
    turn_id: str | None
    interrupted: bool


class AuditRecord(_Record):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    subject: str
    detail: str


def _record(cls: type[_Record], row: Any) -> Any:
    values = {}
    for name in cls.model_fields:
        value = getattr(row, name)
        values[name] = _utc(value) if isinstance(value, datetime) else value
    return cls(**values)

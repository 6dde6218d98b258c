"""The store's tables: the declarative Base (whose metadata Alembic's troupe/migrations/env.py reads),
every *Row table class, the Stamp column type and the UTC helpers _now and _utc."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything troupe stores is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


Stamp = DateTime(timezone=True)
SELF = "self"  # the subject of a persona's memories of itself (its own knowledge, its core block)


class CallerRow(Base):
    __tablename__ = "callers"
    caller_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    first_seen_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    last_seen_at: Mapped[datetime] = mapped_column(Stamp, default=_now)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    caller_id: Mapped[str] = mapped_column(String(160))
    persona: Mapped[str] = mapped_column(String(40))
    process_id: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="active")
    started_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    last_active_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    ended_at: Mapped[datetime | None] = mapped_column(Stamp)
    summary: Mapped[str | None] = mapped_column(Text)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    next_seq: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (Index("ix_sessions_caller_persona_status", "caller_id", "persona", "status"),)


class MessageRow(Base):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32), ForeignKey("sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(64))
    tool_calls: Mapped[str | None] = mapped_column(Text)
    tool_call_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    turn_id: Mapped[str | None] = mapped_column(String(16))  # the turn that wrote it (durable, idempotent turns)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)  # a reply cut off mid-stream
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_messages_session_seq"),
        Index("ix_messages_turn_id", "session_id", "turn_id"),
    )


class TurnRow(Base):
    """One turn's figures, written with its messages in the same transaction: the conversation view's
    tokens, cost and timing per turn, and the panel's charts (time to first token, turns, errors, cost)."""

    __tablename__ = "turns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32), ForeignKey("sessions.id", ondelete="CASCADE"))
    turn_id: Mapped[str] = mapped_column(String(16))
    persona: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    __table_args__ = (Index("ix_turns_session", "session_id"), Index("ix_turns_at", "at"))


class AuditRow(Base):
    """What operators did that touches a person's data: a phone number revealed, a caller forgotten."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    actor: Mapped[str] = mapped_column(String(120))  # the key's name, never the key
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(200))  # masked: the log never holds the number it guards
    detail: Mapped[str] = mapped_column(String(400), default="")
    __table_args__ = (Index("ix_audit_at", "at"),)


class CallIdRow(Base):
    """A platform's call id mapped to the caller it carried a number for, so later requests that carry
    only the call id reach the same caller on any door replica; kept until it expires."""

    __tablename__ = "call_ids"
    call_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    caller_id: Mapped[str] = mapped_column(String(160))
    expires_at: Mapped[datetime] = mapped_column(Stamp)


class MemoryRow(Base):
    """One memory of a persona about a subject (a caller id; "self" for its own knowledge), in a layer:
    profile (durable facts about a person), episode (one summary per conversation) or knowledge (what
    the persona read, reflected and decided). A fact that changed is superseded, not overwritten: the
    old row points at its correction and leaves recall. Full-text search rides on it (SQLite FTS5 table
    `memories_fts`, PostgreSQL column `search`, both kept by the database); `embedding` is float32."""

    __tablename__ = "memories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    persona: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    layer: Mapped[str] = mapped_column(String(16), default="profile")
    channel: Mapped[str] = mapped_column(String(16), default="")
    importance: Mapped[float] = mapped_column(Float, default=0.5)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    superseded_at: Mapped[datetime | None] = mapped_column(Stamp, nullable=True)
    __table_args__ = (
        Index("ix_memories_persona_subject", "persona", "subject"),
        Index("ix_memories_recall", "persona", "subject", "superseded_by"),
    )


class MemoryBlockRow(Base):
    """A core block: a few lines always in the prompt, per persona and subject (a caller, or "self")."""

    __tablename__ = "memory_blocks"
    persona: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(Stamp, default=_now)


class ProcessRow(Base):
    __tablename__ = "processes"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    agent: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(240), default="")
    task: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(Stamp)
    ended_at: Mapped[datetime | None] = mapped_column(Stamp)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    llm_calls: Mapped[int] = mapped_column(Integer, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    estimated_cost: Mapped[float] = mapped_column(Float, default=0.0)
    cost_known: Mapped[bool] = mapped_column(Boolean, default=True)
    tokens_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (Index("ix_processes_ended", "ended_at"),)  # finished rows go by age


class SpendCarriedRow(Base):
    """What an agent spent in process rows since swept away by age, so its budget still counts it."""

    __tablename__ = "spend_carried"
    agent: Mapped[str] = mapped_column(String(40), primary_key=True)
    estimated_cost: Mapped[float] = mapped_column(Float, default=0.0)


class LifeRunRow(Base):
    __tablename__ = "life_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    persona: Mapped[str] = mapped_column(String(40))
    activity: Mapped[str] = mapped_column(String(32))
    slot: Mapped[datetime | None] = mapped_column(Stamp)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[str] = mapped_column(Text, default="")
    process_id: Mapped[str | None] = mapped_column(String(16))
    triggered_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(Stamp)
    __table_args__ = (
        UniqueConstraint("persona", "activity", "slot", name="uq_life_runs_slot"),
        Index("ix_life_runs_triggered", "triggered_at"),
    )


class ScheduleRow(Base):
    """An operator's change to a schedule (paused, or a new cron expression); absent means the default."""

    __tablename__ = "schedules"
    persona: Mapped[str] = mapped_column(String(40), primary_key=True)
    activity: Mapped[str] = mapped_column(String(32), primary_key=True)
    cron_expression: Mapped[str | None] = mapped_column(String(120))
    is_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(Stamp, default=_now)


class NewsReadRow(Base):
    __tablename__ = "news_read"
    persona: Mapped[str] = mapped_column(String(40), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(400))
    url: Mapped[str] = mapped_column(String(1000))
    take: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float] = mapped_column(Float, default=0.0)
    read_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    __table_args__ = (Index("ix_news_read_at", "read_at"),)


class PostRow(Base):
    """A persona's post and where it has been delivered: kept until every target has taken it."""

    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    persona: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, blocked
    pending_targets: Mapped[str] = mapped_column(String(64), default="")  # comma-separated: slack, webhook
    delivered_targets: Mapped[str] = mapped_column(String(64), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    delivered_at: Mapped[datetime | None] = mapped_column(Stamp)
    __table_args__ = (Index("ix_posts_persona_created", "persona", "created_at"),)


class JournalRow(Base):
    __tablename__ = "journal_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    persona: Mapped[str] = mapped_column(String(40))
    day: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    __table_args__ = (Index("ix_journal_persona_day", "persona", "day"),)


class BudgetEventRow(Base):
    __tablename__ = "budget_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(240))
    limit_usd: Mapped[float] = mapped_column(Float)
    spent_usd: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=_now)


class SeenEventRow(Base):
    __tablename__ = "seen_events"
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    __table_args__ = (Index("ix_seen_events_seen_at", "seen_at"),)  # the sweep deletes by age


def in_models(name: str | None, type_: str, parent_names: Any) -> bool:
    """For alembic's comparisons: what the database keeps for memory search itself (SQLite's FTS5 table
    and its shadow tables, PostgreSQL's generated `search` column) is the migrations', not the models'."""
    if type_ == "table" and name is not None and name.startswith("memories_fts"):
        return False
    return not (type_ == "column" and name == "search" and parent_names.get("table_name") == "memories")

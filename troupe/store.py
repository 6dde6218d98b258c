"""The durable store: SQLAlchemy 2 (async) over SQLite by default or PostgreSQL, migrated by Alembic.

Callers, sessions and their messages, persona memory, finished processes and their metrics, life-loop
runs, journals, budget events and webhook ids. Everything here survives an actor's death.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from troupe.actors.messages import ProcessInfo, ProcessMetrics
from troupe.chat_model import ChatMessage, ToolCall
from troupe.config.settings import redact_url
from troupe.errors import StoreUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
    __table_args__ = (UniqueConstraint("session_id", "seq", name="uq_messages_session_seq"),)


class MemoryRow(Base):
    __tablename__ = "memories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    persona: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=_now)
    __table_args__ = (Index("ix_memories_persona_subject", "persona", "subject"),)


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
    __table_args__ = (UniqueConstraint("persona", "activity", "slot", name="uq_life_runs_slot"),)


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


def _record(cls: type[_Record], row: Any) -> Any:
    values = {}
    for name in cls.model_fields:
        value = getattr(row, name)
        values[name] = _utc(value) if isinstance(value, datetime) else value
    return cls(**values)


_WORD = re.compile(r"[a-z0-9]{3,}")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


# the two statements of every turn, built once (building and keying a statement costs more than running it)
_CLAIM = (
    update(SessionRow)
    .where(SessionRow.id == bindparam("sid"))
    .values(
        next_seq=SessionRow.next_seq + bindparam("n"),
        last_active_at=bindparam("now"),
        turns=SessionRow.turns + bindparam("users"),
    )
    .returning(SessionRow.next_seq)
)
_INSERT = insert(MessageRow)


def _message_values(session_id: str, seq: int, message: ChatMessage, at: datetime) -> dict[str, Any]:
    calls = json.dumps([c.model_dump() for c in message.tool_calls]) if message.tool_calls else None
    return {
        "session_id": session_id,
        "seq": seq,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_calls": calls,
        "tool_call_id": message.tool_call_id,
        "created_at": at,
    }


def _append(conn: Connection, session_id: str, messages: Sequence[ChatMessage]) -> int:
    """Claim the next sequence numbers on the session row (one UPDATE, which serialises concurrent
    writers on both databases) and insert the messages; returns the last sequence number."""
    now = _now()
    users = sum(1 for m in messages if m.role == "user")
    claimed = conn.execute(_CLAIM, {"sid": session_id, "n": len(messages), "users": users, "now": now}).scalar()
    if claimed is None:
        raise StoreUnavailable(f"no session {session_id}")
    first = claimed - len(messages)
    conn.execute(_INSERT, [_message_values(session_id, first + i, m, now) for i, m in enumerate(messages)])
    return int(claimed) - 1


def _append_in(engine: Engine, session_id: str, messages: Sequence[ChatMessage]) -> int:
    with engine.begin() as conn:
        return _append(conn, session_id, messages)


def _chat(row: MessageRow) -> ChatMessage:
    calls = tuple(ToolCall(**c) for c in json.loads(row.tool_calls)) if row.tool_calls else ()
    return ChatMessage(
        role=row.role,  # type: ignore[arg-type]
        content=row.content,
        name=row.name,
        tool_calls=calls,
        tool_call_id=row.tool_call_id,
    )


def _process_info(row: ProcessRow) -> ProcessInfo:
    return ProcessInfo(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]
        agent=row.agent,
        name=row.name,
        task=row.task,
        status=row.status,  # type: ignore[arg-type]
        parent_id=row.parent_id,
        started_at=_utc(row.started_at) or _now(),
        ended_at=_utc(row.ended_at),
        restarts=row.restarts,
        error=row.error,
        metrics=ProcessMetrics(
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            llm_calls=row.llm_calls,
            tool_calls=row.tool_calls,
            estimated_cost=row.estimated_cost,
            cost_known=row.cost_known,
            tokens_estimated=row.tokens_estimated,
        ),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # several actor processes share one SQLite file: WAL lets readers and one writer work together
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def run_migrations(connection: Any) -> None:
    """Alembic upgrade to head on an open (sync-facing) connection."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Store:
    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self._url = url
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._is_sqlite = url.startswith("sqlite")
        self._writer: Engine | None = None

    @property
    def url_redacted(self) -> str:
        return redact_url(self._url)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        # a PostgreSQL connection can die with its server; a SQLite file cannot, so it skips the ping
        kwargs: dict[str, Any] = {"pool_pre_ping": not url.startswith("sqlite")}
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 10}
        elif url.startswith("postgresql"):
            kwargs["connect_args"] = {"timeout": 5}
            kwargs.update(pool_size=5, max_overflow=5)
        try:
            engine = create_async_engine(url, **kwargs)
        except Exception as exc:
            raise StoreUnavailable(f"Cannot use the database at {redact_url(url)}: {exc}") from None
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, url)
        try:
            async with asyncio.timeout(30):
                async with engine.begin() as conn:
                    if migrate:
                        await conn.run_sync(run_migrations)
                    else:
                        await conn.execute(select(1))
        except Exception as exc:
            await engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = reason.replace(url, redact_url(url))
            raise StoreUnavailable(f"Cannot reach the database at {redact_url(url)}: {reason}") from None
        return store

    async def close(self) -> None:
        await self.engine.dispose()
        if self._writer is not None:
            self._writer.dispose()

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(select(1))
        except Exception as exc:
            raise StoreUnavailable(
                f"The database at {self.url_redacted} is not answering: {type(exc).__name__}"
            ) from None

    # --- callers, sessions, messages

    async def upsert_caller(self, caller_id: str, *, phone: str | None = None, name: str | None = None) -> CallerRecord:
        for _ in range(3):
            async with self.sessions() as db:
                row = await db.get(CallerRow, caller_id)
                if row is None:
                    row = CallerRow(caller_id=caller_id, phone=phone, name=name)
                    db.add(row)
                else:
                    row.last_seen_at = _now()
                    row.phone = phone or row.phone
                    row.name = name or row.name
                try:
                    await db.commit()
                except IntegrityError:  # two first turns of one caller at once
                    await db.rollback()
                    continue
                return _record(CallerRecord, row)
        raise StoreUnavailable("could not record the caller")

    async def get_caller(self, caller_id: str) -> CallerRecord | None:
        async with self.sessions() as db:
            row = await db.get(CallerRow, caller_id)
            return _record(CallerRecord, row) if row else None

    async def active_session(self, caller_id: str, persona: str) -> SessionRecord | None:
        async with self.sessions() as db:
            row = (
                await db.execute(
                    select(SessionRow)
                    .where(SessionRow.caller_id == caller_id, SessionRow.persona == persona)
                    .where(SessionRow.status == "active")
                    .order_by(SessionRow.started_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            return _record(SessionRecord, row) if row else None

    async def create_session(self, caller_id: str, persona: str, process_id: str) -> SessionRecord:
        async with self.sessions() as db:
            row = SessionRow(id=uuid4().hex, caller_id=caller_id, persona=persona, process_id=process_id)
            db.add(row)
            await db.commit()
            return _record(SessionRecord, row)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self.sessions() as db:
            row = await db.get(SessionRow, session_id)
            return _record(SessionRecord, row) if row else None

    async def set_session_process(self, session_id: str, process_id: str) -> None:
        async with self.sessions() as db:
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(process_id=process_id))
            await db.commit()

    async def append_messages(self, session_id: str, messages: Sequence[ChatMessage]) -> int:
        """Append in order; sequence numbers are claimed atomically on the session row.

        This runs twice on every caller turn, so it is two prebuilt SQL statements in one transaction
        rather than the ORM's unit of work, and on SQLite the whole transaction is one trip to a worker
        thread (aiosqlite would make one per statement; bench/door_bench.py shows the CPU per stream)."""
        if not messages:
            return -1
        writer = self._sqlite_writer()
        for attempt in range(20):
            try:
                if writer is not None:
                    return await asyncio.to_thread(_append_in, writer, session_id, messages)
                async with self.engine.begin() as conn:
                    return await conn.run_sync(_append, session_id, messages)
            except OperationalError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        return -1

    def _sqlite_writer(self) -> Engine | None:
        """A plain (thread-side) engine on the same SQLite file, for the writes on a caller's turn."""
        if not self._is_sqlite or ":memory:" in self._url:
            return None
        if self._writer is None:
            url = make_url(self._url).set(drivername="sqlite")
            self._writer = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
            event.listen(self._writer, "connect", _sqlite_pragmas)
        return self._writer

    async def load_messages(self, session_id: str, limit: int | None = None) -> list[ChatMessage]:
        async with self.sessions() as db:
            query = select(MessageRow).where(MessageRow.session_id == session_id).order_by(MessageRow.seq.desc())
            if limit:
                query = query.limit(limit)
            rows = (await db.execute(query)).scalars().all()
            return [_chat(row) for row in reversed(rows)]

    async def end_session(self, session_id: str, summary: str | None) -> None:
        async with self.sessions() as db:
            await db.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(status="ended", ended_at=_now(), summary=summary)
            )
            await db.commit()

    async def list_sessions(self, status: str | None = "active") -> list[SessionRecord]:
        async with self.sessions() as db:
            query = select(SessionRow).order_by(SessionRow.started_at)
            if status:
                query = query.where(SessionRow.status == status)
            return [_record(SessionRecord, row) for row in (await db.execute(query)).scalars()]

    # --- memory

    async def add_memory(
        self, persona: str, subject: str, content: str, *, kind: str = "note", source: str = ""
    ) -> MemoryRecord:
        async with self.sessions() as db:
            row = MemoryRow(persona=persona, subject=subject[:200], kind=kind, content=content, source=source[:200])
            db.add(row)
            await db.commit()
            return _record(MemoryRecord, row)

    async def recall(
        self, persona: str, *, subject: str | None = None, query: str | None = None, limit: int = 8
    ) -> list[MemoryRecord]:
        """Memories of `persona`, filtered by subject, ranked by word overlap with `query`, newest first."""
        async with self.sessions() as db:
            stmt = select(MemoryRow).where(MemoryRow.persona == persona)
            if subject is not None:
                stmt = stmt.where(MemoryRow.subject == subject)
            stmt = stmt.order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc()).limit(500)
            rows = list((await db.execute(stmt)).scalars())
        if query:
            wanted = _words(query)
            scored = [
                (len(wanted & _words(row.content + " " + row.subject)), index, row) for index, row in enumerate(rows)
            ]
            scored = [item for item in scored if item[0] > 0]
            scored.sort(key=lambda item: (-item[0], item[1]))
            rows = [row for _, _, row in scored]
        return [_record(MemoryRecord, row) for row in rows[:limit]]

    # --- processes

    async def save_process(self, info: ProcessInfo) -> None:
        m = info.metrics
        values = dict(
            kind=info.kind, agent=info.agent, name=info.name, task=info.task, status=info.status,
            parent_id=info.parent_id, started_at=info.started_at, ended_at=info.ended_at, restarts=info.restarts,
            error=info.error, input_tokens=m.input_tokens, output_tokens=m.output_tokens, llm_calls=m.llm_calls,
            tool_calls=m.tool_calls, estimated_cost=m.estimated_cost, cost_known=m.cost_known,
            tokens_estimated=m.tokens_estimated,
        )  # fmt: skip
        async with self.sessions() as db:
            row = await db.get(ProcessRow, info.id)
            if row is None:
                db.add(ProcessRow(id=info.id, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            await db.commit()

    async def load_processes(self, *, status: str | None = None, limit: int = 1000) -> list[ProcessInfo]:
        async with self.sessions() as db:
            query = select(ProcessRow).order_by(ProcessRow.started_at.desc()).limit(limit)
            if status:
                query = query.where(ProcessRow.status == status)
            return [_process_info(row) for row in (await db.execute(query)).scalars()]

    async def spend_by_agent(self) -> dict[str, float]:
        async with self.sessions() as db:
            rows = await db.execute(
                select(ProcessRow.agent, func.sum(ProcessRow.estimated_cost)).group_by(ProcessRow.agent)
            )
            return {agent: float(total or 0.0) for agent, total in rows}

    # --- life loops

    async def claim_life_slot(self, persona: str, activity: str, slot: datetime, at: datetime | None = None) -> bool:
        """True for the one caller that claims this slot; the unique constraint refuses the rest."""
        async with self.sessions() as db:
            db.add(LifeRunRow(persona=persona, activity=activity, slot=slot, status="running", output="",
                              triggered_at=at or _now()))  # fmt: skip
            try:
                await db.commit()
            except IntegrityError:
                await db.rollback()
                return False
            return True

    async def finish_life_run(
        self,
        persona: str,
        activity: str,
        slot: datetime | None,
        *,
        status: str,
        output: str,
        process_id: str | None,
        at: datetime | None = None,
    ) -> None:
        async with self.sessions() as db:
            if slot is not None:
                result = await db.execute(
                    update(LifeRunRow)
                    .where(LifeRunRow.persona == persona, LifeRunRow.activity == activity, LifeRunRow.slot == slot)
                    .values(status=status, output=output, process_id=process_id, finished_at=_now())
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    await db.commit()
                    return
            db.add(LifeRunRow(persona=persona, activity=activity, slot=slot, status=status, output=output,
                              process_id=process_id, triggered_at=at or _now(), finished_at=_now()))  # fmt: skip
            await db.commit()

    async def last_life_run(self, persona: str, activity: str) -> LifeRunRecord | None:
        async with self.sessions() as db:
            row = (
                await db.execute(
                    select(LifeRunRow)
                    .where(LifeRunRow.persona == persona, LifeRunRow.activity == activity)
                    .where(LifeRunRow.slot.is_not(None))
                    .order_by(LifeRunRow.slot.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            return _record(LifeRunRecord, row) if row else None

    async def life_runs(
        self,
        persona: str | None = None,
        activity: str | None = None,
        limit: int = 50,
        *,
        since: datetime | None = None,
    ) -> list[LifeRunRecord]:
        async with self.sessions() as db:
            query = select(LifeRunRow).order_by(LifeRunRow.triggered_at.desc(), LifeRunRow.id.desc()).limit(limit)
            if persona:
                query = query.where(LifeRunRow.persona == persona)
            if activity:
                query = query.where(LifeRunRow.activity == activity)
            if since is not None:
                query = query.where(LifeRunRow.triggered_at >= since)
            return [_record(LifeRunRecord, row) for row in (await db.execute(query)).scalars()]

    async def schedule_overrides(self, persona: str | None = None) -> list[ScheduleOverride]:
        async with self.sessions() as db:
            query = select(ScheduleRow)
            if persona:
                query = query.where(ScheduleRow.persona == persona)
            return [_record(ScheduleOverride, row) for row in (await db.execute(query)).scalars()]

    async def set_schedule(
        self, persona: str, activity: str, *, cron_expression: str | None = None, is_paused: bool | None = None
    ) -> ScheduleOverride:
        """Change what is given; what is not keeps its stored (or default) value."""
        async with self.sessions() as db, db.begin():
            row = await db.get(ScheduleRow, (persona, activity))
            if row is None:
                row = ScheduleRow(persona=persona, activity=activity, cron_expression=None, is_paused=False)
                db.add(row)
            if cron_expression is not None:
                row.cron_expression = cron_expression
            if is_paused is not None:
                row.is_paused = is_paused
            row.updated_at = _now()
            await db.flush()
            record: ScheduleOverride = _record(ScheduleOverride, row)
        return record

    async def count_user_turns(self, persona: str, since: datetime) -> int:
        """Messages callers sent to `persona` since a moment: how much it has talked lately."""
        async with self.sessions() as db:
            query = (
                select(func.count(MessageRow.id))
                .join(SessionRow, SessionRow.id == MessageRow.session_id)
                .where(SessionRow.persona == persona, MessageRow.role == "user", MessageRow.created_at >= since)
            )
            return int((await db.execute(query)).scalar_one())

    # --- news, posts

    async def read_news_ids(self, persona: str) -> set[str]:
        async with self.sessions() as db:
            rows = await db.execute(select(NewsReadRow.item_id).where(NewsReadRow.persona == persona))
            return set(rows.scalars())

    async def mark_news_read(
        self, persona: str, items: Sequence[tuple[str, str, str, str, float]], at: datetime | None = None
    ) -> None:
        """(item_id, title, url, take, score) for each item read; an item already read is left as it was."""
        read_at = at or _now()
        async with self.sessions() as db:
            known = set(
                (
                    await db.execute(
                        select(NewsReadRow.item_id).where(
                            NewsReadRow.persona == persona, NewsReadRow.item_id.in_([i[0] for i in items])
                        )
                    )
                ).scalars()
            )
            db.add_all(
                NewsReadRow(persona=persona, item_id=i, title=t[:400], url=u[:1000], take=k, score=sc, read_at=read_at)
                for i, t, u, k, sc in items
                if i not in known
            )
            await db.commit()

    async def news_read(self, persona: str, limit: int = 10) -> list[NewsReadRecord]:
        async with self.sessions() as db:
            query = (
                select(NewsReadRow)
                .where(NewsReadRow.persona == persona)
                .order_by(NewsReadRow.read_at.desc(), NewsReadRow.score.desc())
                .limit(limit)
            )
            return [_record(NewsReadRecord, row) for row in (await db.execute(query)).scalars()]

    async def add_post(
        self,
        persona: str,
        text: str,
        *,
        status: str,
        targets: Sequence[str],
        error: str = "",
        at: datetime | None = None,
    ) -> int:
        async with self.sessions() as db:
            row = PostRow(
                persona=persona,
                text=text,
                status=status,
                pending_targets=",".join(targets),
                last_error=error[:400],
                created_at=at or _now(),
            )
            db.add(row)
            await db.commit()
            return row.id

    async def post_delivered(self, post_id: int, target: str) -> None:
        async with self.sessions() as db, db.begin():
            row = await db.get(PostRow, post_id)
            if row is None:
                return
            pending = [t for t in row.pending_targets.split(",") if t and t != target]
            row.pending_targets = ",".join(pending)
            row.delivered_targets = ",".join(sorted({*row.delivered_targets.split(","), target} - {""}))
            if not pending:
                row.status, row.delivered_at, row.last_error = "delivered", _now(), ""

    async def post_failed(self, post_id: int, error: str) -> None:
        async with self.sessions() as db:
            await db.execute(
                update(PostRow)
                .where(PostRow.id == post_id)
                .values(attempts=PostRow.attempts + 1, last_error=error[:400])
            )
            await db.commit()

    async def posts(
        self, persona: str | None = None, *, status: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[PostRecord]:
        async with self.sessions() as db:
            query = select(PostRow).order_by(PostRow.created_at.desc(), PostRow.id.desc()).limit(limit)
            if persona:
                query = query.where(PostRow.persona == persona)
            if status:
                query = query.where(PostRow.status == status)
            if since is not None:
                query = query.where(PostRow.created_at >= since)
            return [_record(PostRecord, row) for row in (await db.execute(query)).scalars()]

    async def append_journal(self, persona: str, day: str, text: str) -> None:
        async with self.sessions() as db:
            db.add(JournalRow(persona=persona, day=day, text=text))
            await db.commit()

    async def journal(self, persona: str, day: str) -> list[JournalRecord]:
        async with self.sessions() as db:
            query = (
                select(JournalRow)
                .where(JournalRow.persona == persona, JournalRow.day == day)
                .order_by(JournalRow.created_at, JournalRow.id)
            )
            return [_record(JournalRecord, row) for row in (await db.execute(query)).scalars()]

    # --- budgets and webhooks

    async def record_budget_event(self, scope: str, subject: str, limit_usd: float, spent_usd: float) -> None:
        async with self.sessions() as db:
            db.add(BudgetEventRow(scope=scope, subject=subject[:240], limit_usd=limit_usd, spent_usd=spent_usd))
            await db.commit()

    async def budget_events(self, limit: int = 100) -> list[BudgetEventRecord]:
        async with self.sessions() as db:
            query = select(BudgetEventRow).order_by(BudgetEventRow.created_at.desc()).limit(limit)
            return [_record(BudgetEventRecord, row) for row in (await db.execute(query)).scalars()]

    async def claim_event(self, source: str, event_id: str) -> bool:
        """True the first time an event id is seen; False for every replay, across restarts."""
        async with self.sessions() as db:
            db.add(SeenEventRow(source=source, event_id=event_id[:200]))
            try:
                await db.commit()
            except IntegrityError:
                await db.rollback()
                return False
            return True

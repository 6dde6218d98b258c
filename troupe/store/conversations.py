"""Callers, their sessions and the sessions' messages: the two prebuilt statements of every turn
(_CLAIM, _INSERT), _append which runs them, and the ConversationStore mixin of Store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from troupe.core.chat import ChatMessage, ToolCall
from troupe.core.errors import StoreUnavailable
from troupe.core.messages import TurnStats
from troupe.store.engine import StoreBase
from troupe.store.records import CallerRecord, SessionRecord, _record
from troupe.store.schema import (
    SELF,
    CallerRow,
    CallIdRow,
    LifeRunRow,
    MemoryBlockRow,
    MemoryRow,
    MessageRow,
    SessionRow,
    TurnRow,
    _now,
    _utc,
)

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
_INSERT_TURN = insert(TurnRow)
_END = update(SessionRow).where(SessionRow.id == bindparam("sid")).values(status="ended", ended_at=bindparam("now"))
# what a session binding a caller reads: their active conversation with the persona, and the persona's
# memories of them
_ACTIVE = (
    select(SessionRow.id)
    .where(SessionRow.caller_id == bindparam("caller"), SessionRow.persona == bindparam("persona"))
    .where(SessionRow.status == "active")
    .order_by(SessionRow.started_at.desc())
    .limit(1)
)
_EPISODES = (
    select(MemoryRow.content)
    .where(MemoryRow.persona == bindparam("persona"), MemoryRow.subject == bindparam("caller"))
    .where(MemoryRow.layer == "episode", MemoryRow.superseded_by.is_(None))
    .order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc())
    .limit(bindparam("limit"))
)
_BLOCKS = select(MemoryBlockRow.subject, MemoryBlockRow.content).where(
    MemoryBlockRow.persona == bindparam("persona"), MemoryBlockRow.subject.in_(bindparam("subjects", expanding=True))
)
_LIFE_VERSION = select(func.count(LifeRunRow.id), func.max(LifeRunRow.finished_at)).where(
    LifeRunRow.persona == bindparam("persona")
)
_RESUME = update(SessionRow).where(SessionRow.id == bindparam("sid")).values(process_id=bindparam("pid"))
_NEW_SESSION = insert(SessionRow)


def _conversation(conn: Connection, caller_id: str, persona: str, memories: int) -> Bound:
    found = conn.execute(_ACTIVE, {"caller": caller_id, "persona": persona}).scalar()
    episodes = conn.execute(_EPISODES, {"caller": caller_id, "persona": persona, "limit": memories}).scalars()
    blocks = dict(conn.execute(_BLOCKS, {"persona": persona, "subjects": [caller_id, SELF]}).all())
    runs, last = conn.execute(_LIFE_VERSION, {"persona": persona}).one()
    return Bound(found, list(episodes), blocks.get(caller_id, ""), blocks.get(SELF, ""), f"{runs}@{last}")


@dataclass(frozen=True)
class Bound:
    """What a session binding a caller reads in one trip."""

    session_id: str | None  # their active conversation with the persona; None: there is none
    episodes: list[str]  # the newest summaries of their conversations, newest first
    caller_block: str  # the persona's core block about them
    persona_block: str  # and its core block about itself
    life_version: str  # the version of the persona's life (its runs, and when the last finished)


def _open_session(
    conn: Connection, session_id: str, caller_id: str, persona: str, process_id: str, resumed: bool, identified: bool
) -> None:
    if identified:
        now = _now()
        phone = caller_id if caller_id.startswith("+") else None
        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite  # both spell the upsert alike
        upsert = dialect.insert(CallerRow).values(caller_id=caller_id, phone=phone, first_seen_at=now, last_seen_at=now)
        conn.execute(upsert.on_conflict_do_update(
            index_elements=[CallerRow.caller_id],
            set_={"last_seen_at": now, "phone": func.coalesce(upsert.excluded.phone, CallerRow.phone)},
        ))  # fmt: skip
    if resumed:
        conn.execute(_RESUME, {"sid": session_id, "pid": process_id})
    else:
        conn.execute(
            _NEW_SESSION, {"id": session_id, "caller_id": caller_id, "persona": persona, "process_id": process_id}
        )


def _one_turn(
    conn: Connection,
    session_id: str,
    caller_id: str,
    persona: str,
    process_id: str,
    messages: Sequence[ChatMessage],
    turn_id: str,
    interrupted: bool,
    reply_from: int,
    stats: TurnStats | None,
) -> None:
    """A conversation that was one turn long (a caller with no identity), whole: opened, kept, ended."""
    conn.execute(_NEW_SESSION, {"id": session_id, "caller_id": caller_id, "persona": persona, "process_id": process_id})
    if messages or stats:
        _append(conn, session_id, messages, turn_id, interrupted, reply_from, stats)
    conn.execute(_END, {"sid": session_id, "now": _now()})


def _message_values(
    session_id: str, seq: int, message: ChatMessage, at: datetime, turn_id: str | None, interrupted: bool
) -> dict[str, Any]:
    calls = json.dumps([c.model_dump() for c in message.tool_calls]) if message.tool_calls else None
    return {
        "turn_id": turn_id,
        "interrupted": interrupted and message.role == "assistant",
        "session_id": session_id,
        "seq": seq,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_calls": calls,
        "tool_call_id": message.tool_call_id,
        "created_at": at,
    }


def _append(
    conn: Connection,
    session_id: str,
    messages: Sequence[ChatMessage],
    turn_id: str | None = None,
    interrupted: bool = False,
    reply_from: int = 0,
    stats: TurnStats | None = None,
) -> int:
    """Claim the next sequence numbers on the session row (one UPDATE, which serialises concurrent
    writers on both databases) and insert the messages; returns the last sequence number. Messages
    from `reply_from` on are the reply, which `interrupted` marks. `stats`, the finished turn's
    figures, go in the same transaction."""
    now = _now()
    if stats is not None:
        conn.execute(_INSERT_TURN, {**stats.model_dump(), "session_id": session_id, "at": now})
    if not messages:
        return -1
    users = sum(1 for m in messages if m.role == "user")
    claimed = conn.execute(_CLAIM, {"sid": session_id, "n": len(messages), "users": users, "now": now}).scalar()
    if claimed is None:
        raise StoreUnavailable(f"no session {session_id}")
    first = claimed - len(messages)
    rows = [
        _message_values(session_id, first + i, m, now, turn_id, interrupted and i >= reply_from)
        for i, m in enumerate(messages)
    ]
    conn.execute(_INSERT, rows)
    return int(claimed) - 1


def _chat(row: MessageRow) -> ChatMessage:
    calls = tuple(ToolCall(**c) for c in json.loads(row.tool_calls)) if row.tool_calls else ()
    return ChatMessage(
        role=row.role,  # type: ignore[arg-type]
        content=row.content,
        name=row.name,
        tool_calls=calls,
        tool_call_id=row.tool_call_id,
    )


class ConversationStore(StoreBase):
    async def conversation(self, caller_id: str, persona: str, *, memories: int = 3) -> Bound:
        """What a session binding a caller needs, in one trip: their active conversation with `persona`,
        the newest episodes and the core blocks always in the prompt, and the version of the persona's
        life, which says whether a digest is current."""
        bound: Bound = await self._read(_conversation, caller_id, persona, memories)
        return bound

    async def open_session(
        self, session_id: str, caller_id: str, persona: str, process_id: str, *, resumed: bool, identified: bool
    ) -> None:
        """In one transaction: the caller is recorded (when `identified`), and the session is created
        under `session_id` or, `resumed`, handed to `process_id`."""
        await self._write(_open_session, session_id, caller_id, persona, process_id, resumed, identified)

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

    async def latest_persona(self, caller_id: str) -> str | None:
        """The persona this caller (a Slack thread, a phone number) spoke with last, if any."""
        async with self.sessions() as db:
            return (
                await db.execute(
                    select(SessionRow.persona)
                    .where(SessionRow.caller_id == caller_id)
                    .order_by(SessionRow.last_active_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()

    async def create_session(
        self, caller_id: str, persona: str, process_id: str, *, session_id: str | None = None
    ) -> SessionRecord:
        async with self.sessions() as db:
            row = SessionRow(id=session_id or uuid4().hex, caller_id=caller_id, persona=persona, process_id=process_id)
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

    async def append_messages(
        self,
        session_id: str,
        messages: Sequence[ChatMessage],
        *,
        turn_id: str | None = None,
        interrupted: bool = False,
        reply_from: int = 0,
        stats: TurnStats | None = None,
    ) -> int:
        """Append in order; sequence numbers are claimed atomically on the session row. `turn_id` tags
        the turn that wrote them; `interrupted` marks a reply that was cut off mid-stream (the messages
        from `reply_from` on, when the turn's input goes in the same write).

        This runs on every caller turn (its input and reply together), so it is two prebuilt SQL
        statements in one transaction rather than the ORM's unit of work, and on SQLite the whole
        transaction is one trip to a worker thread (aiosqlite would make one per statement;
        bench/door_bench.py shows the CPU per stream)."""
        if not messages and stats is None:
            return -1
        last: int = await self._write(_append, session_id, messages, turn_id, interrupted, reply_from, stats)
        return last

    async def keep_one_turn(
        self,
        session_id: str,
        caller_id: str,
        persona: str,
        process_id: str,
        messages: Sequence[ChatMessage],
        *,
        turn_id: str,
        interrupted: bool = False,
        reply_from: int = 0,
        stats: TurnStats | None = None,
    ) -> None:
        """A one-turn conversation in one write: its session (ended), its messages and its figures."""
        args = (session_id, caller_id, persona, process_id, tuple(messages), turn_id, interrupted, reply_from, stats)
        await self._write(_one_turn, *args)

    async def keep_turn(
        self,
        session_id: str,
        turn_id: str,
        input_messages: Sequence[ChatMessage],
        output: Sequence[ChatMessage],
        *,
        interrupted: bool = False,
        caller_id: str | None = None,
        persona: str | None = None,
        process_id: str = "",
        stats: TurnStats | None = None,
    ) -> bool:
        """Make sure a turn is in the transcript, whoever wrote what of it: the door calls this when the
        session actor died mid-turn. Idempotent by turn id: its input (written at `prepare`) and its
        reply (at `finish`) are each written at most once. Returns True if anything was missing. With
        `caller_id` and `persona`, a session whose row its actor died before writing is created."""
        if caller_id is not None and persona is not None and await self.get_session(session_id) is None:
            try:
                await self.create_session(caller_id, persona, process_id, session_id=session_id)
            except IntegrityError:
                pass  # its actor wrote it after all
        async with self.sessions() as db:
            kept = (
                await db.execute(
                    select(func.count())
                    .select_from(MessageRow)
                    .where(MessageRow.session_id == session_id, MessageRow.turn_id == turn_id)
                )
            ).scalar_one()
        if kept >= len(input_messages) + len(output):
            return False
        # a turn's input and reply go in together, or the input alone (all of it or none); the reply is
        # marked interrupted where it was cut off
        missing = (tuple(input_messages) if kept < len(input_messages) else ()) + tuple(output)
        await self.append_messages(
            session_id, missing, turn_id=turn_id, interrupted=interrupted, reply_from=len(missing) - len(output),
            stats=stats,
        )  # fmt: skip
        return True

    async def interrupted_turns(self, session_id: str) -> int:
        """How many replies of this session were cut off mid-stream (and kept)."""
        async with self.sessions() as db:
            return int(
                (
                    await db.execute(
                        select(func.count())
                        .select_from(MessageRow)
                        .where(MessageRow.session_id == session_id, MessageRow.interrupted.is_(True))
                    )
                ).scalar_one()
            )

    async def remember_call_id(self, call_id: str, caller_id: str, ttl_s: float) -> None:
        """A platform's call id belongs to this caller until `ttl_s` from now (expired ones are dropped)."""
        now = _now()
        async with self.sessions() as db:
            await db.execute(delete(CallIdRow).where(CallIdRow.expires_at < now))
            row = await db.get(CallIdRow, call_id)
            expires = now + timedelta(seconds=ttl_s)
            if row is None:
                db.add(CallIdRow(call_id=call_id, caller_id=caller_id, expires_at=expires))
            else:
                row.caller_id, row.expires_at = caller_id, expires
            try:
                await db.commit()
            except IntegrityError:  # two replicas recorded it at once: the same mapping
                await db.rollback()

    async def caller_for_call(self, call_id: str) -> str | None:
        async with self.sessions() as db:
            row = await db.get(CallIdRow, call_id)
        if row is None or (_utc(row.expires_at) or _now()) < _now():
            return None
        return row.caller_id

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

"""What the control panel reads beyond the live registry: kept conversations a page at a time (by
persona, status and caller), one conversation's messages and turn figures, the turns since a cursor (the
charts' feed), and the audit log of what operators did to a person's data; the PanelStore mixin of Store."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select

from troupe.store.engine import StoreBase
from troupe.store.records import (
    AuditRecord,
    LifeRunRecord,
    MessageRecord,
    PostRecord,
    SessionRecord,
    TurnRecord,
    _Record,
    _record,
)
from troupe.store.schema import AuditRow, JournalRow, LifeRunRow, MessageRow, PostRow, SessionRow, TurnRow, _now

R = TypeVar("R", bound=_Record)  # the record a page is made of
TRANSCRIPT_MAX = 2000  # messages one conversation view holds (the oldest beyond it are counted, not sent)
AUDIT_KEEP = 100_000  # audit rows kept; older ones go as new ones come (a bound, not a retention policy)


def _ending(text: str) -> str:
    """A LIKE pattern matching ids that end with `text` (the whole id included), its wildcards literal."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PanelStore(StoreBase):
    async def conversations(
        self, *, persona: str | None = None, status: str | None = None, caller: str | None = None,
        limit: int = 20, offset: int = 0,
    ) -> tuple[list[SessionRecord], int]:  # fmt: skip
        """A page of kept conversations, the most recently active first, and how many match in all.
        `caller` matches a caller id that is it or ends with it (the last digits of a number)."""
        conditions = [SessionRow.persona == persona] if persona else []
        conditions += [SessionRow.status == status] if status else []
        conditions += [SessionRow.caller_id.like(_ending(caller), escape="\\")] if caller else []
        order = (SessionRow.last_active_at.desc(), SessionRow.id)
        return await self._page(SessionRow, SessionRecord, conditions, order, limit, offset)

    async def transcript(self, session_id: str) -> tuple[list[MessageRecord], list[TurnRecord], int]:
        """One conversation's messages in order (its newest TRANSCRIPT_MAX), its turns' figures, and how
        many older messages were left out."""
        async with self.sessions() as db:
            counted = select(func.count()).select_from(MessageRow).where(MessageRow.session_id == session_id)
            total = int((await db.execute(counted)).scalar_one())
            query = (
                select(MessageRow).where(MessageRow.session_id == session_id).order_by(MessageRow.seq.desc())
                .limit(TRANSCRIPT_MAX)
            )  # fmt: skip
            messages = [_record(MessageRecord, row) for row in (await db.execute(query)).scalars()]
            turns = await db.execute(select(TurnRow).where(TurnRow.session_id == session_id).order_by(TurnRow.id))
            return list(reversed(messages)), [_record(TurnRecord, t) for t in turns.scalars()], total - len(messages)

    async def turns_since(
        self, after_id: int = 0, *, since: datetime | None = None, limit: int = 5000
    ) -> list[TurnRecord]:
        """Turns kept after the cursor `after_id` (and at or after `since`), oldest first: the charts' feed."""
        query = select(TurnRow).where(TurnRow.id > after_id)
        if since is not None:
            query = query.where(TurnRow.at >= since)
        async with self.sessions() as db:
            rows = (await db.execute(query.order_by(TurnRow.id).limit(limit))).scalars()
            return [_record(TurnRecord, row) for row in rows]

    async def life_runs_page(
        self, *, persona: str | None = None, activity: str | None = None, status: str | None = None,
        limit: int = 20, offset: int = 0,
    ) -> tuple[list[LifeRunRecord], int]:  # fmt: skip
        """A page of the execution log, newest first, and how many runs match in all."""
        chosen = ((LifeRunRow.persona, persona), (LifeRunRow.activity, activity), (LifeRunRow.status, status))
        conditions = [column == value for column, value in chosen if value]
        order = (LifeRunRow.triggered_at.desc(), LifeRunRow.id.desc())
        return await self._page(LifeRunRow, LifeRunRecord, conditions, order, limit, offset)

    async def posts_page(
        self, *, persona: str | None = None, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[PostRecord], int]:
        """A page of posts, newest first, and how many match in all."""
        chosen = ((PostRow.persona, persona), (PostRow.status, status))
        conditions = [column == value for column, value in chosen if value]
        order = (PostRow.created_at.desc(), PostRow.id.desc())
        return await self._page(PostRow, PostRecord, conditions, order, limit, offset)

    async def journal_days(self, persona: str, *, limit: int = 30) -> list[tuple[str, int]]:
        """The days a persona wrote in its journal, newest first, with how many entries each."""
        async with self.sessions() as db:
            query = (
                select(JournalRow.day, func.count()).where(JournalRow.persona == persona).group_by(JournalRow.day)
                .order_by(JournalRow.day.desc()).limit(limit)
            )  # fmt: skip
            return [(day, int(n)) for day, n in (await db.execute(query)).all()]

    async def audit(self, actor: str, role: str, action: str, subject: str, detail: str = "") -> None:
        """Record an operator's action on a person's data. `subject` must already be masked."""
        async with self.sessions() as db:
            db.add(AuditRow(actor=actor[:120], role=role[:16], action=action[:32], subject=subject[:200],
                            detail=detail[:400], at=_now()))  # fmt: skip
            await db.flush()
            newest = (await db.execute(select(func.max(AuditRow.id)))).scalar_one()
            if newest and newest > AUDIT_KEEP and newest % 1000 == 0:
                await db.execute(delete(AuditRow).where(AuditRow.id <= newest - AUDIT_KEEP))
            await db.commit()

    async def audit_log(self, *, limit: int = 50, offset: int = 0) -> tuple[list[AuditRecord], int]:
        return await self._page(AuditRow, AuditRecord, [], (AuditRow.id.desc(),), limit, offset)

    async def _page(
        self, row: type[Any], record: type[R], conditions: list[Any], order: tuple[Any, ...], limit: int, offset: int
    ) -> tuple[list[R], int]:
        """A page of `row`'s table where every condition holds, in `order`, as records, and how many rows
        hold in all."""
        async with self.sessions() as db:
            total = (await db.execute(select(func.count()).select_from(row).where(*conditions))).scalar_one()
            query = select(row).where(*conditions).order_by(*order).limit(limit).offset(offset)
            return [_record(record, found) for found in (await db.execute(query)).scalars()], int(total)

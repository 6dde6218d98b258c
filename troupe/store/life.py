"""What the life loops keep: runs (one per persona, activity and slot), operators' schedule changes,
news read, posts and their delivery, journals; the LifeStore mixin of Store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from troupe.store.engine import StoreBase
from troupe.store.records import JournalRecord, LifeRunRecord, NewsReadRecord, PostRecord, ScheduleOverride, _record
from troupe.store.schema import (
    JournalRow,
    LifeRunRow,
    MessageRow,
    NewsReadRow,
    PostRow,
    ScheduleRow,
    SessionRow,
    _now,
)


class LifeStore(StoreBase):
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

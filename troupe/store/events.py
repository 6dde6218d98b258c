"""Budget events (a scope's limit reached) and seen events, which de-duplicate webhook deliveries
across restarts and expire (a retention and a bounded size), and the sweep that keeps history for a
while, not for ever; the EventStore mixin of Store."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from troupe.store.engine import StoreBase
from troupe.store.records import BudgetEventRecord, _record
from troupe.store.schema import (
    BudgetEventRow,
    CallIdRow,
    LifeRunRow,
    NewsReadRow,
    ProcessRow,
    SeenEventRow,
    SpendCarriedRow,
    TurnRow,
    _now,
)

SWEEP_EVERY = 1000  # claims between one process's sweeps of old seen events (fewer when the cap is small)


class EventStore(StoreBase):
    _claims = 0  # this process's claims since its last sweep

    async def record_budget_event(self, scope: str, subject: str, limit_usd: float, spent_usd: float) -> None:
        async with self.sessions() as db:
            db.add(BudgetEventRow(scope=scope, subject=subject[:240], limit_usd=limit_usd, spent_usd=spent_usd))
            await db.commit()

    async def budget_events(self, limit: int = 100) -> list[BudgetEventRecord]:
        async with self.sessions() as db:
            query = select(BudgetEventRow).order_by(BudgetEventRow.created_at.desc()).limit(limit)
            return [_record(BudgetEventRecord, row) for row in (await db.execute(query)).scalars()]

    async def claim_event(self, source: str, event_id: str) -> bool:
        """True the first time an event id is seen; False for every replay within the retention
        (TROUPE_SEEN_EVENTS_TTL_S), across restarts and replicas. Every so many claims (the first
        included) this process sweeps what has expired, so the table stays near its bound."""
        self._claims += 1
        if (self._claims - 1) % min(SWEEP_EVERY, max(1, self.options.seen_events_max_rows // 10)) == 0:
            await self.sweep_events()
        async with self.sessions() as db:
            db.add(SeenEventRow(source=source, event_id=event_id[:200]))
            try:
                await db.commit()
            except IntegrityError:
                await db.rollback()
                return False
            return True

    async def sweep_events(self, now: datetime | None = None) -> int:
        """Forget seen events older than the retention, then the oldest past the bounded size (a flood
        of distinct ids should not grow the table without end); returns how many went."""
        now = now or _now()
        ttl = timedelta(seconds=self.options.seen_events_ttl_s)
        # the seen_at of the newest row past the cap; NULL (nothing to drop) while the table is under it
        cutoff = (
            select(SeenEventRow.seen_at)
            .order_by(SeenEventRow.seen_at.desc())
            .offset(self.options.seen_events_max_rows)
            .limit(1)
            .scalar_subquery()
        )
        async with self.engine.begin() as conn:
            expired = await conn.execute(delete(SeenEventRow).where(SeenEventRow.seen_at < now - ttl))
            overflow = await conn.execute(delete(SeenEventRow).where(SeenEventRow.seen_at <= cutoff))
        return int(expired.rowcount or 0) + int(overflow.rowcount or 0)

    async def forget_events(self, source: str, older_than: timedelta) -> int:
        """Drop seen events of `source` older than `older_than` (a signed delivery that old is refused by
        its timestamp anyway); returns how many went."""
        async with self.sessions() as db:
            result = await db.execute(
                delete(SeenEventRow).where(SeenEventRow.source == source, SeenEventRow.seen_at < _now() - older_than)
            )
            await db.commit()
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def deduplication_sizes(self) -> dict[str, int]:
        """Rows held by each de-duplication table (seen webhook events, call ids, articles read), for a
        status page or a gauge: seen_events should stay under TROUPE_SEEN_EVENTS_MAX_ROWS."""
        tables = {"seen_events": SeenEventRow, "call_ids": CallIdRow, "news_read": NewsReadRow}
        async with self.engine.connect() as conn:
            return {
                name: int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
                for name, table in tables.items()
            }

    async def sweep_history(self, now: datetime | None = None) -> dict[str, int]:
        """Forget history older than TROUPE_HISTORY_KEEP_DAYS: each turn's figures (the charts read the
        last day), finished process rows (their spend is carried over first, so no budget forgets it),
        life runs and the articles read. Conversations, memories, journals and posts are kept; a
        person's go with `forget_caller`. Returns how many rows of each went."""
        cutoff = (now or _now()) - timedelta(days=self.options.history_keep_days)
        finished = ProcessRow.ended_at.is_not(None) & (ProcessRow.ended_at < cutoff)
        async with self.engine.begin() as conn:
            spent = await conn.execute(
                select(ProcessRow.agent, func.sum(ProcessRow.estimated_cost)).where(finished).group_by(ProcessRow.agent)
            )
            carried = [{"agent": agent, "estimated_cost": float(total)} for agent, total in spent if total]
            if carried:
                # both dialects spell the upsert alike
                dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
                upsert = dialect.insert(SpendCarriedRow).values(carried)
                await conn.execute(upsert.on_conflict_do_update(
                    index_elements=["agent"],
                    set_={"estimated_cost": SpendCarriedRow.estimated_cost + upsert.excluded.estimated_cost},
                ))  # fmt: skip
            gone = {
                "turns": await conn.execute(delete(TurnRow).where(TurnRow.at < cutoff)),
                "processes": await conn.execute(delete(ProcessRow).where(finished)),
                "life_runs": await conn.execute(delete(LifeRunRow).where(LifeRunRow.triggered_at < cutoff)),
                "news_read": await conn.execute(delete(NewsReadRow).where(NewsReadRow.read_at < cutoff)),
            }
        return {name: int(result.rowcount or 0) for name, result in gone.items()}

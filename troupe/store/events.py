"""Budget events (a scope's limit reached) and seen events, which de-duplicate webhook deliveries
across restarts; the EventStore mixin of Store."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from troupe.store.engine import StoreBase
from troupe.store.records import BudgetEventRecord, _record
from troupe.store.schema import BudgetEventRow, SeenEventRow, _now


class EventStore(StoreBase):
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

    async def forget_events(self, source: str, older_than: timedelta) -> int:
        """Drop seen events of `source` older than `older_than` (a signed delivery that old is refused by
        its timestamp anyway); returns how many went."""
        async with self.sessions() as db:
            result = await db.execute(
                delete(SeenEventRow).where(SeenEventRow.source == source, SeenEventRow.seen_at < _now() - older_than)
            )
            await db.commit()
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

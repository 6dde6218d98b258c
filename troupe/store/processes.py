"""Processes (running or finished) with their metrics, saved so a restarted orchestrator rebuilds
its registry and spend by agent; the ProcessStore mixin of Store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from troupe.core.messages import ProcessInfo, ProcessMetrics
from troupe.store.engine import StoreBase
from troupe.store.schema import ProcessRow, SpendCarriedRow, _now, _utc


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


def _process_values(info: ProcessInfo) -> dict[str, Any]:
    m = info.metrics
    return dict(
        kind=info.kind, agent=info.agent, name=info.name, task=info.task, status=info.status,
        parent_id=info.parent_id, started_at=info.started_at, ended_at=info.ended_at, restarts=info.restarts,
        error=info.error, input_tokens=m.input_tokens, output_tokens=m.output_tokens, llm_calls=m.llm_calls,
        tool_calls=m.tool_calls, estimated_cost=m.estimated_cost, cost_known=m.cost_known,
        tokens_estimated=m.tokens_estimated,
    )  # fmt: skip


class ProcessStore(StoreBase):
    async def save_process(self, info: ProcessInfo) -> None:
        await self.save_processes([info])

    async def save_processes(self, infos: list[ProcessInfo]) -> None:
        """Write registry rows, new or changed, in one statement (an upsert on either database)."""
        if not infos:
            return
        dialect: Any = sqlite if self._is_sqlite else postgresql  # both spell the upsert alike
        latest = {info.id: info for info in infos}  # one row per id (the last word wins)
        statement = dialect.insert(ProcessRow).values([{"id": pid, **_process_values(i)} for pid, i in latest.items()])
        columns = list(_process_values(infos[0]))
        statement = statement.on_conflict_do_update(
            index_elements=[ProcessRow.id], set_={name: statement.excluded[name] for name in columns}
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement)

    async def load_processes(self, *, status: str | None = None, limit: int = 1000) -> list[ProcessInfo]:
        async with self.sessions() as db:
            query = select(ProcessRow).order_by(ProcessRow.started_at.desc()).limit(limit)
            if status:
                query = query.where(ProcessRow.status == status)
            return [_process_info(row) for row in (await db.execute(query)).scalars()]

    async def spend_by_agent(self) -> dict[str, float]:
        """Each agent's spend for good: its process rows, and what rows swept away by age carried over."""
        async with self.sessions() as db:
            rows = await db.execute(
                select(ProcessRow.agent, func.sum(ProcessRow.estimated_cost)).group_by(ProcessRow.agent)
            )
            spend = {agent: float(total or 0.0) for agent, total in rows}
            for row in (await db.execute(select(SpendCarriedRow))).scalars():
                spend[row.agent] = spend.get(row.agent, 0.0) + row.estimated_cost
            return spend

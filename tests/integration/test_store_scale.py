"""The store shared by many processes, on SQLite and a real PostgreSQL: migrations run once however many
processes start together, a store out of connections says the database is busy, and seen events expire."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from datetime import timedelta
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text, update

from tests.integration import test_store
from troupe.core.chat import ChatMessage
from troupe.core.errors import StoreUnavailable
from troupe.store import MIGRATIONS, SeenEventRow, Store, StoreOptions
from troupe.store.schema import _now

url = test_store.url  # the same fixture: a fresh SQLite file, or a fresh PostgreSQL database
postgres = pytest.mark.parametrize("url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def _migrate(database: str, barrier: Any, results: Any) -> None:
    """One process starting troupe: waits for the others, then opens the store with migrations."""

    async def run() -> bool:
        barrier.wait()
        store = await Store.open(database, migrate=True)
        await store.close()
        return store.migrated

    try:
        results.put(("ok", asyncio.run(run())))
    except BaseException as exc:  # reported to the test, which names it
        results.put(("failed", f"{type(exc).__name__}: {exc}"))


async def test_migrations_run_once_when_many_processes_start_together(url: str) -> None:
    processes = 4
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    started = [context.Process(target=_migrate, args=(url, barrier, results)) for _ in range(processes)]
    for process in started:
        process.start()
    outcomes = [await asyncio.to_thread(results.get, True, 120) for _ in started]
    for process in started:
        process.join(30)
    assert [kind for kind, _ in outcomes] == ["ok"] * processes, outcomes
    assert sorted(migrated for _, migrated in outcomes) == [False] * (processes - 1) + [True]
    store = await Store.open(url, migrate=True)
    try:
        assert store.migrated is False  # at head already: nothing to do, no lock waited for
        async with store.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        assert versions == ScriptDirectory(str(MIGRATIONS)).get_heads()  # the newest migration, once
        await store.set_memory_block("Tony", "+14155550100", "Runs payments.")  # the schema is whole: the newest
        assert await store.memory_block("Tony", "+14155550100") == "Runs payments."  # table works
    finally:
        await store.close()


@postgres
async def test_a_store_out_of_connections_says_the_database_is_busy(url: str) -> None:
    small = StoreOptions(pool_size=1, max_overflow=0, pool_timeout_s=0.5, application_name="troupe-test-busy")
    store = await Store.open(url, options=small)
    try:
        session = await store.create_session("c", "Tony", "p1")
        async with store.engine.connect() as held:  # the process's one connection, busy elsewhere
            names = await held.execute(text("SELECT current_setting('application_name')"))
            assert names.scalar_one() == "troupe-test-busy"  # what an operator sees in pg_stat_activity
            began = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await store.append_messages(session.id, [ChatMessage(role="user", content="hello")])
            assert time.monotonic() - began < 5  # waited its pool timeout, not forever
        assert "busy" in caught.value.message and caught.value.status == 503
        # once the connection is free again, writes go through
        assert await store.append_messages(session.id, [ChatMessage(role="user", content="hello")]) == 0
    finally:
        await store.close()


@postgres
async def test_a_server_with_no_connection_to_spare_says_the_database_is_busy(url: str) -> None:
    store = await Store.open(url, options=StoreOptions(pool_size=1, max_overflow=1))
    try:
        database = url.rsplit("/", 1)[1]
        async with store.engine.connect() as held:
            await held.execute(text(f'ALTER DATABASE "{database}" CONNECTION LIMIT 1'))
            await held.commit()
            # this process's second connection is one more than the server allows: refused, and said so
            with pytest.raises(StoreUnavailable) as caught:
                await store.create_session("c", "Tony", "p1")
            assert "busy" in caught.value.message
    finally:
        await store.close()


async def _age(store: Store, source: str, event_id: str, by: timedelta) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(SeenEventRow)
            .where(SeenEventRow.source == source, SeenEventRow.event_id == event_id)
            .values(seen_at=_now() - by)
        )


async def test_a_seen_event_past_its_retention_is_forgotten_and_a_fresh_one_is_still_a_replay(url: str) -> None:
    store = await Store.open(url, options=StoreOptions(seen_events_ttl_s=3600))
    try:
        assert await store.claim_event("slack", "Ev-old") is True
        assert await store.claim_event("slack", "Ev-fresh") is True
        await _age(store, "slack", "Ev-old", timedelta(hours=2))
        assert await store.claim_event("slack", "Ev-old") is False  # not swept yet: still a replay
        assert await store.sweep_events() == 1
        assert await store.claim_event("slack", "Ev-old") is True  # forgotten: its retention is over
        assert await store.claim_event("slack", "Ev-fresh") is False  # within it: refused as a replay
        assert (await store.deduplication_sizes())["seen_events"] == 2
    finally:
        await store.close()


async def test_seen_events_stay_bounded_when_many_arrive(url: str) -> None:
    cap = 50
    store = await Store.open(url, options=StoreOptions(seen_events_max_rows=cap))
    try:
        for i in range(400):
            assert await store.claim_event("vapi", f"end-of-call:{i}") is True
        sizes = await store.deduplication_sizes()
        assert cap <= sizes["seen_events"] <= cap + cap // 10  # swept every cap/10 claims
        assert sizes["call_ids"] == 0 and sizes["news_read"] == 0
        assert await store.claim_event("vapi", "end-of-call:399") is False  # the newest are still known
    finally:
        await store.close()


async def test_history_past_its_days_is_swept_and_no_budget_forgets_what_it_spent(url: str) -> None:
    """Turn figures, finished process rows, life runs and articles read older than the kept days go; the
    fresh ones, a process still running however old, and the conversation itself stay; each agent's
    spend is the same after the sweep as before it, sweep after sweep."""
    from sqlalchemy import func, insert, select

    from troupe.store.schema import LifeRunRow, MessageRow, NewsReadRow, ProcessRow, TurnRow

    store = await Store.open(url, options=StoreOptions(history_keep_days=30))
    old, fresh = _now() - timedelta(days=40), _now() - timedelta(days=1)

    def process(pid: str, agent: str, cost: float, started: Any, ended: Any) -> dict[str, Any]:
        status = "completed" if ended else "running"
        return {"id": pid, "kind": "session", "agent": agent, "status": status, "started_at": started,
                "ended_at": ended, "estimated_cost": cost}  # fmt: skip

    try:
        session = (await store.create_session("+14155550100", "Tony", "p-old")).id
        await store.append_messages(session, [ChatMessage(role="user", content="hello from March")])
        async with store.engine.begin() as conn:
            await conn.execute(insert(ProcessRow), [
                process("p-old", "Tony", 2.0, old, old), process("p-new", "Tony", 1.0, fresh, fresh),
                process("p-live", "Tony", 0.5, old, None), process("p-maya", "Maya", 4.0, old, old),
            ])  # fmt: skip
            await conn.execute(insert(TurnRow), [
                {"session_id": session, "turn_id": "t1", "persona": "Tony", "at": old},
                {"session_id": session, "turn_id": "t2", "persona": "Tony", "at": fresh},
            ])  # fmt: skip
            await conn.execute(insert(LifeRunRow), [
                {"persona": "Tony", "activity": "news", "status": "completed", "triggered_at": when}
                for when in (old, fresh)
            ])  # fmt: skip
            await conn.execute(insert(NewsReadRow), [
                {"persona": "Tony", "item_id": f"item-{n}", "title": "A", "url": "https://a.test/", "read_at": when}
                for n, when in enumerate((old, fresh))
            ])  # fmt: skip
        before = await store.spend_by_agent()
        assert before == {"Tony": 3.5, "Maya": 4.0}
        gone = await store.sweep_history()
        assert gone == {"turns": 1, "processes": 2, "life_runs": 1, "news_read": 1}
        assert await store.spend_by_agent() == before  # carried over, not forgotten
        async with store.engine.connect() as conn:
            kept = set((await conn.execute(select(ProcessRow.id))).scalars())
            assert kept == {"p-new", "p-live"}
            assert (await conn.execute(select(func.count()).select_from(MessageRow))).scalar_one() == 1
            assert (await conn.execute(select(TurnRow.turn_id))).scalars().all() == ["t2"]
        # a second sweep, weeks on: the newer rows go too, and the carried spend adds up
        assert await store.sweep_history(now=_now() + timedelta(days=60)) == {
            "turns": 1, "processes": 1, "life_runs": 1, "news_read": 1
        }  # fmt: skip
        assert await store.spend_by_agent() == before
        assert await store.sweep_history() == {"turns": 0, "processes": 0, "life_runs": 0, "news_read": 0}
    finally:
        await store.close()

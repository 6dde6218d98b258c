"""The store on SQLite and on a real PostgreSQL: every operation a restart depends on."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from troupe.core.chat import ChatMessage, ToolCall
from troupe.core.errors import StoreUnavailable
from troupe.core.messages import MetricsDelta, ProcessInfo, ProcessMetrics
from troupe.store import Base, Store
from troupe.store.schema import in_models


def postgres_url() -> str:
    url = os.environ.get("TROUPE_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("TROUPE_TEST_POSTGRES_URL is not set in CI: the PostgreSQL tests must run there")
        pytest.skip("no PostgreSQL (set TROUPE_TEST_POSTGRES_URL; scripts/test.sh starts one)")
    return url


@asynccontextmanager
async def throwaway_postgres(prefix: str = "t") -> AsyncIterator[str]:
    """A database of its own on the test PostgreSQL server (its async URL), dropped afterwards."""
    base = postgres_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield "postgresql+asyncpg://" + base.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(base)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'troupe.db'}"
        return
    async with throwaway_postgres() as database:
        yield database


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url)
    yield opened
    await opened.close()


async def test_transcript_round_trip_with_tool_calls(store: Store) -> None:
    await store.upsert_caller("+14155550100", phone="+14155550100")
    session = await store.create_session("+14155550100", "Tony", "abcd1234")
    messages = [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", tool_calls=(ToolCall(id="c1", name="recall", arguments='{"query": "x"}'),)),
        ChatMessage(role="tool", content="nothing", tool_call_id="c1", name="recall"),
        ChatMessage(role="assistant", content="Hello!"),
    ]
    assert await store.append_messages(session.id, messages) == 3
    assert await store.load_messages(session.id) == messages
    assert await store.load_messages(session.id, limit=1) == messages[-1:]
    active = await store.active_session("+14155550100", "Tony")
    assert active is not None and active.turns == 1 and active.started_at.tzinfo is not None


async def test_concurrent_appends_from_two_stores_keep_order(url: str, store: Store) -> None:
    other = await Store.open(url, migrate=False)
    try:
        session = await store.create_session("c", "Tony", "p1")

        async def add(s: Store, i: int) -> None:
            await s.append_messages(session.id, [ChatMessage(role="user", content=f"m{i}")])

        await asyncio.gather(*(add(store if i % 2 else other, i) for i in range(20)))
        loaded = await store.load_messages(session.id)
        assert sorted(m.content for m in loaded) == sorted(f"m{i}" for i in range(20))
        assert (await store.get_session(session.id)).turns == 20
    finally:
        await other.close()


async def test_session_lifecycle(store: Store) -> None:
    session = await store.create_session("c", "Maya", "p1")
    assert [s.id for s in await store.list_sessions()] == [session.id]
    await store.end_session(session.id, "Talked about the launch.")
    assert await store.active_session("c", "Maya") is None
    ended = await store.get_session(session.id)
    assert ended.status == "ended" and ended.summary == "Talked about the launch." and ended.ended_at


async def test_a_bind_reads_in_one_trip_and_its_session_is_written_in_one(store: Store) -> None:
    new = await store.conversation("+14155550100", "Tony")  # a new caller
    assert (new.session_id, new.episodes, new.caller_block) == (None, [], "")
    await store.open_session("s1", "+14155550100", "Tony", "p1", resumed=False, identified=True)
    await store.add_memory("Tony", "+14155550100", "older", kind="summary")
    await store.add_memory("Tony", "+14155550100", "newer", kind="summary")
    await store.add_memory("Tony", "+14155550100", "a fact, recalled when it bears on a turn", kind="fact")
    await store.add_memory("Tony", "someone else", "not theirs", kind="summary")
    await store.set_memory_block("Tony", "+14155550100", "Runs payments at Initech.")
    await store.set_memory_block("Tony", "self", "I promised the board a plan by Friday.")
    bound = await store.conversation("+14155550100", "Tony", memories=1)
    assert (bound.session_id, bound.episodes) == ("s1", ["newer"]) and bound.life_version.startswith("0@")
    assert bound.caller_block == "Runs payments at Initech."
    assert bound.persona_block == "I promised the board a plan by Friday."
    caller = await store.get_caller("+14155550100")
    assert caller is not None and caller.phone == "+14155550100"
    # the caller's next session, on another actor: the same row, the caller seen again, the phone kept
    await store.open_session("s1", "+14155550100", "Tony", "p2", resumed=True, identified=True)
    again = await store.get_caller("+14155550100")
    assert again is not None and again.phone == "+14155550100" and again.last_seen_at >= caller.last_seen_at
    assert (await store.get_session("s1")).process_id == "p2"
    # a caller with no identity gets a session and no caller row
    await store.open_session("s2", "anon-1", "Tony", "p3", resumed=False, identified=False)
    assert await store.get_caller("anon-1") is None and (await store.get_session("s2")).status == "active"


async def test_the_registry_is_written_as_one_upsert(store: Store) -> None:
    rows = [ProcessInfo(id=f"0000000{i}", kind="session", agent="Tony", status="running") for i in range(3)]
    await store.save_processes(rows)
    await store.save_processes([rows[0].model_copy(update={"status": "completed"}), *rows[1:]])
    loaded = {p.id: p.status for p in await store.load_processes()}
    assert loaded == {"00000000": "completed", "00000001": "running", "00000002": "running"}


async def test_recall_filters_by_subject_and_ranks_by_query(store: Store) -> None:
    await store.add_memory("Tony", "+1555", "Dana runs the payments team", kind="fact")
    await store.add_memory("Tony", "+1555", "Dana prefers morning calls", kind="fact")
    await store.add_memory("Tony", "other", "Payments migration is due in March")
    await store.add_memory("Maya", "+1555", "Dana likes the new brand")
    assert len(await store.recall("Tony", subject="+1555")) == 2
    ranked = await store.recall("Tony", query="payments team")
    assert ranked[0].content == "Dana runs the payments team"
    assert {m.content for m in ranked[:2]} == {"Dana runs the payments team", "Payments migration is due in March"}
    assert "Dana likes the new brand" not in {m.content for m in ranked}  # Maya's memory, not Tony's
    newest = await store.recall("Tony", subject="+1555", limit=1)
    assert newest[0].content == "Dana prefers morning calls"


async def test_a_caller_with_no_memories_is_recalled_without_embedding_their_words(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first-time caller's turn costs one read, not an embedding; once they have a memory, their words
    are embedded and it is found; once they are erased, nothing is found."""
    embedded: list[list[str]] = []
    real = store._embed

    async def counted(texts: list[str]) -> Any:
        embedded.append(texts)
        return await real(texts)

    monkeypatch.setattr(store, "_embed", counted)
    assert await store.recall("Tony", subject="+14155550188", query="what is my daughter called?") == []
    assert embedded == []
    await store.add_memory("Tony", "+14155550188", "The caller's daughter is called Maya.", kind="fact")
    found = await store.recall("Tony", subject="+14155550188", query="what is my daughter called?")
    assert [m.content for m in found] == ["The caller's daughter is called Maya."]
    assert embedded == [["my daughter is called Maya."], ["what is my daughter called?"]]  # as the caller says it
    await store.erase_caller("+14155550188")
    assert await store.recall("Tony", subject="+14155550188", query="what is my daughter called?") == []


async def test_recall_finds_a_second_fact_through_the_first_and_keeps_one_copy_of_the_same_words(
    store: Store,
) -> None:
    caller = "+14155550177"
    facts = [
        "The caller is spending Thanksgiving at their mother's this year.",
        "The caller's mum retired to Lisbon.",
        "The caller drives a Volvo XC60.",
        "The caller's dentist appointment is on July 23.",
        "The caller's team has grown to 12 people.",
        "The caller is trying to cut down on sugar.",
        "The caller likes to keep calls short on Mondays.",
        "The caller likes to keep calls short on Mondays.",  # said again on a later call
    ]
    for fact in facts:
        await store.add_memory("Tony", caller, fact, kind="fact")
    question = "Which city am I in over Thanksgiving?"
    found = [m.content for m in await store.recall("Tony", subject=caller, query=question, limit=3)]
    assert found[0] == "The caller is spending Thanksgiving at their mother's this year."
    assert "The caller's mum retired to Lisbon." in found  # the city is in a fact the question never names
    mondays = await store.recall("Tony", subject=caller, query="When do I like calls kept short?", limit=8)
    assert [m.content for m in mondays].count("The caller likes to keep calls short on Mondays.") == 1


async def test_recall_answers_the_question_in_the_callers_words_not_their_aside(store: Store) -> None:
    caller = "+14155550155"
    for fact in [
        "The caller has a beagle called Juniper.",
        "The caller's niece Ines is getting married in February.",
        "The caller's niece Nadia is getting married in September.",
        "The caller drives a Volvo XC60.",
        "The caller is allergic to shellfish.",
        "The caller's team has grown to 12 people.",
        "The caller's sister moved to Lisbon last year.",
        "The caller is learning Spanish on their commute.",
    ]:
        await store.add_memory("Tony", caller, fact, kind="fact")
    words = "My niece is over and she keeps asking about the wedding. What's my dog called again?"
    found = await store.recall("Tony", subject=caller, query=words, limit=1)
    assert [m.content for m in found] == ["The caller has a beagle called Juniper."]


async def test_a_correction_is_found_by_the_words_of_the_fact_it_corrected(store: Store) -> None:
    """ "What does my son do at weekends?" is near "he plays soccer every weekend", not near "he is all
    about the cello now": the correction is found through what it corrected, and only it is recalled."""
    caller = "+14155550166"
    first = await store.add_memory("Tony", caller, "The caller's son Kofi plays soccer every weekend.", kind="fact")
    for fact in [
        "The caller drives a Volvo XC60.",
        "The caller's daughter Priya started piano lessons this term.",
        "The caller's team has grown to 12 people.",
        "The caller is training for a half marathon.",
        "The caller's nephew Theo plays cricket at school.",
        "The caller spends Saturdays at the garden centre.",
        "The caller is learning Spanish on their commute.",
        "The caller never misses a match when Arsenal play.",
    ]:
        await store.add_memory("Tony", caller, fact, kind="fact")
    fix = "Update: Kofi has stopped all that; these days he is all about the cello."
    await store.add_memory("Tony", caller, fix, kind="fact", supersedes=first.id)
    found = await store.recall("Tony", subject=caller, query="What does my son get up to at weekends?", limit=3)
    assert found[0].content == fix
    assert first.id not in {m.id for m in found}


async def test_a_fact_is_found_by_a_question_asked_in_the_callers_own_voice(store: Store) -> None:
    """Facts are kept as "the caller never takes meetings before 9:30", asked for as "how early can you
    book me in?": embedded in the caller's voice ("I never take meetings before 9:30"), the fact is found."""
    caller = "+14155550144"
    for fact in [
        "The caller never takes meetings before 9:30.",
        "The caller is married to Alex, who works as a nurse.",
        "The caller has been training for a half marathon.",
        "The caller's birthday is on December 12.",
        "The caller's office is closed on the 19th for a public holiday.",
        "The caller's niece Ines is getting married in February.",
        "The caller is planning a garden party in June.",
        "The caller's team has grown to 12 people.",
        "The caller drives a Volvo XC60.",
        "The caller is allergic to shellfish.",
    ]:
        await store.add_memory("Tony", caller, fact, kind="fact")
    found = await store.recall("Tony", subject=caller, query="How early in the day can you book me in?", limit=2)
    assert "The caller never takes meetings before 9:30." in [m.content for m in found]


async def test_processes_upsert_and_spend(store: Store) -> None:
    info = ProcessInfo(id="a1b2c3d4", kind="session", agent="Tony", name="tony-x", status="running")
    await store.save_process(info)
    done = info.model_copy(
        update={
            "status": "completed",
            "ended_at": datetime.now(UTC),
            "metrics": ProcessMetrics().plus(MetricsDelta(input_tokens=10, cost_usd=0.25)),
        }
    )
    await store.save_process(done)
    await store.save_process(
        ProcessInfo(
            id="00000001", kind="task", agent="Tony", status="failed", metrics=ProcessMetrics(estimated_cost=0.5)
        )
    )
    loaded = {p.id: p for p in await store.load_processes()}
    assert loaded["a1b2c3d4"].status == "completed" and loaded["a1b2c3d4"].metrics.input_tokens == 10
    assert (await store.spend_by_agent())["Tony"] == pytest.approx(0.75)
    assert [p.id for p in await store.load_processes(status="failed")] == ["00000001"]


async def test_a_life_slot_is_claimed_once_even_across_stores(url: str, store: Store) -> None:
    other = await Store.open(url, migrate=False)
    try:
        slot = datetime(2026, 11, 24, 9, tzinfo=UTC)
        results = await asyncio.gather(*(s.claim_life_slot("Tony", "news", slot) for s in (store, other, store)))
        assert sorted(results) == [False, False, True]
        await store.finish_life_run("Tony", "news", slot, status="completed", output="Read 3 items", process_id="p")
        last = await other.last_life_run("Tony", "news")
        assert last.slot == slot and last.status == "completed" and last.output == "Read 3 items"
        await store.finish_life_run("Tony", "news", None, status="completed", output="manual", process_id=None)
        assert (await store.life_runs("Tony"))[0].output == "manual"
    finally:
        await other.close()


async def test_replayed_events_and_budget_events_and_journal(store: Store) -> None:
    assert await store.claim_event("slack", "Ev1") is True
    assert await store.claim_event("slack", "Ev1") is False
    assert await store.claim_event("vapi", "Ev1") is True
    await store.record_budget_event("session", "Tony:+1555", 1.0, 1.2)
    assert (await store.budget_events())[0].spent_usd == pytest.approx(1.2)
    await store.append_journal("Tony", "2026-11-24", "Good day.")
    await store.append_journal("Tony", "2026-11-24", "Shipped it.")
    assert [j.text for j in await store.journal("Tony", "2026-11-24")] == ["Good day.", "Shipped it."]


async def test_migrations_match_the_models(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        async with store.engine.connect() as conn:
            diffs = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_name": in_models}), Base.metadata
                )
            )
        assert diffs == []
    finally:
        await store.close()


async def test_unreachable_database_is_named_without_its_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await Store.open("postgresql+asyncpg://troupe:sekret@127.0.0.1:1/nowhere")
    assert "127.0.0.1:1" in caught.value.message and "sekret" not in caught.value.message

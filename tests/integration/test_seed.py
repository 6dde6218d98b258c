"""seed_day: a day of 200 conversations and of every executive's life, written into a SQLite store the
way troupe writes it, dated over the 24 hours before now, the same for the same seed."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from troupe.core.caller import channel_of, is_anonymous, normalise_phone
from troupe.core.persona_file import PersonaCatalog, load_personas
from troupe.core.schedule import ACTIVITIES, default_schedule
from troupe.store import Store
from troupe.testing.seed import Seeded, seed_day

NOW = datetime(2026, 12, 2, 15, 40, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> PersonaCatalog:
    return load_personas()


async def _seeded(path: Path, catalog: PersonaCatalog, seed: int = 7) -> tuple[Store, Seeded]:
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    began = time.perf_counter()
    seeded = await seed_day(store, catalog, now=NOW, seed=seed)
    took = time.perf_counter() - began
    print(f"seed_day: {len(seeded.session_ids)} sessions, {seeded.turns} turns in {took:.2f} s")
    assert took < 60  # about 2.5 s on a loaded 2-core machine: this bound only catches a write path gone wrong
    return store, seeded


@pytest.fixture(scope="module")
async def day(tmp_path_factory: pytest.TempPathFactory, catalog: PersonaCatalog) -> AsyncIterator[tuple[Store, Seeded]]:
    store, seeded = await _seeded(tmp_path_factory.mktemp("seed") / "s.db", catalog)
    yield store, seeded
    await store.close()


async def test_the_panel_counts_every_conversation_most_recent_first(day: tuple[Store, Seeded]) -> None:
    store, seeded = day
    page, total = await store.conversations(limit=20)
    assert total == len(seeded.session_ids) == 200
    assert len(page) == 20
    assert [s.last_active_at for s in page] == sorted((s.last_active_at for s in page), reverse=True)
    active, active_total = await store.conversations(status="active", limit=50)
    assert {s.id for s in active} == set(seeded.active_session_ids)
    assert active_total == 10
    ended = (await store.conversations(status="ended", limit=1))[1]
    assert ended == 190
    everyone = (await store.conversations(limit=500))[0]
    assert all(seeded.since <= s.started_at <= s.last_active_at <= NOW for s in everyone)
    assert all(s.ended_at is not None and s.last_active_at < s.ended_at <= NOW for s in everyone if s.status == "ended")


async def test_callers_are_a_mix_of_phones_slack_threads_and_anonymous(day: tuple[Store, Seeded]) -> None:
    store, seeded = day
    sessions = (await store.conversations(limit=500))[0]
    by_channel = Counter("anonymous" if is_anonymous(s.caller_id) else channel_of(s.caller_id, "") for s in sessions)
    assert 0.5 <= by_channel["voice"] / 200 <= 0.7
    assert 0.15 <= by_channel["slack"] / 200 <= 0.35
    assert 0.08 <= by_channel["anonymous"] / 200 <= 0.22
    phones = {s.caller_id for s in sessions if s.caller_id.startswith("+")}
    assert all(normalise_phone(p) == p and p[5:9] == "5550" for p in phones)  # E.164, in the fictional 555-01xx
    assert len(phones) < by_channel["voice"]  # some callers call again
    kept = {c: await store.get_caller(c) for c in seeded.caller_ids}
    assert {c for c, record in kept.items() if record is not None} == {c for c in kept if not is_anonymous(c)}
    assert {p: getattr(kept[p], "phone", None) for p in phones} == {p: p for p in phones}


async def test_turns_are_spread_over_the_day_and_their_costs_add_up(day: tuple[Store, Seeded]) -> None:
    store, seeded = day
    turns = await store.turns_since(0, limit=10_000)
    assert len(turns) == seeded.turns
    assert all(seeded.since <= t.at <= NOW for t in turns)
    assert len({t.at.replace(minute=0, second=0, microsecond=0) for t in turns}) >= 20
    assert [t.at for t in turns] == sorted(t.at for t in turns)  # written in the order they happened
    cost: dict[str, list[float]] = defaultdict(list)
    for t in turns:
        cost[t.persona].append(t.cost_usd)
    assert {p: math.fsum(c) for p, c in cost.items()} == pytest.approx(dict(seeded.cost_by_persona))
    assert dict(Counter(t.error_code for t in turns if t.error_code)) == seeded.errors
    assert sum(t.interrupted for t in turns) == seeded.interrupted > 0
    assert sum(seeded.errors.values()) > 0
    assert sum(t.tool_calls for t in turns) == seeded.tool_calls > 0
    ttft = sorted(t.ttft_ms for t in turns if t.ttft_ms is not None)
    assert 150 <= ttft[len(ttft) // 2] <= 400  # a median around 250 ms
    # an error has no reply; an interrupted reply is marked on its message
    failed = next(t for t in turns if t.error_code)
    messages, figures, _ = await store.transcript(failed.session_id)
    assert [m.role for m in messages if m.turn_id == failed.turn_id] == ["user"]
    figure = next(f for f in figures if f.turn_id == failed.turn_id)
    assert figure.ttft_ms is None and figure.output_tokens == 0 and figure.cost_usd == 0
    cut = next(t for t in turns if t.interrupted)
    messages, _, _ = await store.transcript(cut.session_id)
    assert any(m.interrupted and m.role == "assistant" for m in messages if m.turn_id == cut.turn_id)
    assert all(seeded.since <= m.created_at <= NOW for m in messages)


def _scheduled(expression: str, tz: str) -> list[datetime]:
    itr = croniter(expression, (NOW - timedelta(hours=24)).astimezone(ZoneInfo(tz)))
    slots = []
    while (slot := itr.get_next(datetime).astimezone(UTC)) <= NOW:
        slots.append(slot)
    return slots


async def test_every_executive_lived_its_scheduled_day(day: tuple[Store, Seeded], catalog: PersonaCatalog) -> None:
    store, seeded = day
    statuses: Counter[str] = Counter()
    for persona in catalog.executives():
        schedule = default_schedule(catalog.names().index(persona.name))
        for activity in ACTIVITIES:
            runs = await store.life_runs(persona.name, activity, limit=100)
            expected = _scheduled(schedule[activity], persona.timezone)
            assert expected, (persona.name, activity)
            assert {r.slot for r in runs if r.slot is not None} == set(expected), (persona.name, activity)
            assert len(runs) == seeded.life_runs[persona.name][activity]
            assert all(r.finished_at is not None and r.triggered_at <= r.finished_at <= NOW for r in runs)
            statuses.update(r.status for r in runs)
        local = NOW.astimezone(ZoneInfo(persona.timezone)).date()
        for day_ in (local, local - timedelta(days=1)):
            assert await store.journal(persona.name, day_.isoformat()), (persona.name, day_)
        posts = await store.posts(persona.name)
        assert 2 <= len(posts) <= 4
        assert all(seeded.since <= p.created_at <= NOW for p in posts)
        counts = await store.memory_counts(persona.name)
        assert sum(layer["live"] for layer in counts.values()) >= 2
    assert dict(statuses) == seeded.life_runs_by_status
    assert statuses["failed"] >= 3 and statuses["skipped"] >= 1
    posts = await store.posts(limit=100)
    assert sorted(p.id for p in posts) == sorted(seeded.post_ids)
    assert Counter(p.status for p in posts) == seeded.posts_by_status
    assert {"delivered", "pending", "blocked"} <= set(seeded.posts_by_status)
    assert len(seeded.memory_ids) <= 30


async def test_the_same_seed_writes_the_same_day(
    day: tuple[Store, Seeded], catalog: PersonaCatalog, tmp_path: Path
) -> None:
    first_store, first = day
    again_store, again = await _seeded(tmp_path / "again.db", catalog)
    other_store, other = await _seeded(tmp_path / "other.db", catalog, seed=8)
    try:
        assert again == first
        for store in (first_store, again_store):
            assert (await store.conversations(limit=1))[1] == 200
        assert len(await again_store.turns_since(0, limit=10_000)) == len(
            await first_store.turns_since(0, limit=10_000)
        )
        assert set(other.session_ids).isdisjoint(first.session_ids)
        assert other.turns != first.turns or other.cost_by_persona != first.cost_by_persona
    finally:
        await again_store.close()
        await other_store.close()

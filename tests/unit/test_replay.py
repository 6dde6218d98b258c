"""Replayed webhook signatures: a bounded, expiring record per replica in front of the store's seen events,
which every replica shares (a real SQLite store here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from troupe.integrations.replay import ReplayGuard, SeenSignatures
from troupe.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/t.db", migrate=True)
    yield opened
    await opened.close()


def test_a_signature_is_seen_once_while_it_is_remembered() -> None:
    clock = Clock()
    seen = SeenSignatures(ttl_s=600, clock=clock)
    assert seen.first_time("sig-1")
    assert not seen.first_time("sig-1")
    assert seen.first_time("sig-2")
    clock.now += 601
    assert seen.first_time("sig-1")  # forgotten: by now its timestamp is refused anyway
    assert len(seen) == 1  # sig-2 expired with it


def test_the_record_is_bounded() -> None:
    seen = SeenSignatures(ttl_s=600, kept=2, clock=Clock())
    for signature in ("a", "b", "c"):
        assert seen.first_time(signature)
    assert len(seen) == 2
    assert seen.first_time("a")  # the oldest made room (the store still knows it)
    assert not seen.first_time("c")


async def test_a_replay_is_refused_on_any_replica(store: Store) -> None:
    async def shared() -> Store:
        return store

    one, other = ReplayGuard(shared, ttl_s=600), ReplayGuard(shared, ttl_s=600)
    assert await one.first_delivery("vapi", "abc123")
    assert not await one.first_delivery("vapi", "abc123")  # this replica remembers
    assert not await other.first_delivery("vapi", "abc123")  # another replica asks the store
    assert await other.first_delivery("elevenlabs", "abc123")  # each platform's signatures are its own


async def test_without_the_store_this_replica_still_refuses_replays() -> None:
    async def down() -> Any:
        raise OSError("the database is unreachable")

    guard = ReplayGuard(down, ttl_s=600)
    assert await guard.first_delivery("vapi", "abc123")
    assert not await guard.first_delivery("vapi", "abc123")


async def test_the_stores_signatures_do_not_only_grow(store: Store) -> None:
    async def shared() -> Store:
        return store

    await store.claim_event("vapi-signed", "old-one")
    await store.claim_event("slack", "an-event-id")  # other sources' ids are not touched
    assert await store.forget_events("vapi-signed", timedelta(seconds=-1)) == 1  # everything is "older" than the future
    guard = ReplayGuard(shared, ttl_s=600)
    assert await guard.first_delivery("vapi", "old-one")  # forgotten: a signature that old fails its timestamp anyway
    assert not await store.claim_event("slack", "an-event-id")

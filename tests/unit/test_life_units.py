"""Posts are shaped and checked before they go out; schedules read as words on the control panel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from troupe.core.schedule import describe
from troupe.life import digest
from troupe.life.posts import MAX_CHARS, shape, unsafe


def test_a_long_post_keeps_whole_sentences_within_280_characters() -> None:
    text = "Boring systems win. " * 13 + "This sentence would run past the limit and must go."
    post = shape(text)
    assert len(post) <= MAX_CHARS and post.endswith("win.")


def test_a_post_without_sentence_ends_is_cut_at_a_word() -> None:
    post = shape("word " * 100)
    assert len(post) <= MAX_CHARS and post.endswith("word…")


def test_markdown_and_quotes_are_removed() -> None:
    assert shape('"**Ship** it, _today_."') == "Ship it, today."


def test_blocked_words_match_whole_words_in_any_case() -> None:
    blocked = ("api key", "layoff")
    assert unsafe("Never paste your API key in chat.", blocked) == "api key"
    assert unsafe("Layoffs are not on the table.", blocked) is None  # a different word
    assert unsafe("We discussed the LAYOFF rumours.", blocked) == "layoff"


def test_cron_in_words() -> None:
    assert describe("0 6,12,18 * * *", "UTC") == "At 06:00, 12:00 and 18:00 (UTC)"
    assert describe("30 9 * * 1,5", "Europe/Paris") == "At 09:30, only on Monday and Friday (Europe/Paris)"
    assert describe("0 9 1 * *", "UTC") == "At 09:00, on day 1 of the month (UTC)"
    assert describe("*/15 * * * *", "UTC") == "Every 15 minutes (UTC)"


async def test_the_digest_is_read_once_per_life_version_of_its_persona(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    release = asyncio.Event()

    async def read(store: object, persona: str) -> tuple[str, ...]:
        reads.append(persona)
        await release.wait()
        return (f"{persona} read {len(reads)}",)

    monkeypatch.setattr(digest, "life_digest", read)
    cache = digest.DigestCache()
    store: Any = object()
    first = [asyncio.ensure_future(cache.get(store, "Tony", "3@t1")) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    assert {await f for f in first} == {("Tony read 1",)} and reads == ["Tony"]  # three sessions, one read
    assert await cache.get(store, "Tony", "3@t1") == ("Tony read 1",) and len(reads) == 1
    # an activity ran since: the next caller hears the new digest, never the old one
    assert await cache.get(store, "Tony", "4@t2") == ("Tony read 2",)

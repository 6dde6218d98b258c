"""Speakable chunking: sentence ends, the length and time bounds, and never a split word."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from troupe.clients.speakable import MAX_CHARS, length_cut, sentence_cut, speakable, word_cut


async def deltas(*items: str | float) -> AsyncIterator[str]:
    """Text deltas; a float is a pause of that many seconds."""
    for item in items:
        if isinstance(item, float):
            await asyncio.sleep(item)
        else:
            yield item


async def pieces(source: AsyncIterator[str], **bounds: float) -> list[str]:
    return [piece async for piece in speakable(source, **bounds)]  # type: ignore[arg-type]


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("Hello there. How", len("Hello there. ")),
        ("Really?! Yes", len("Really?! ")),
        ('He said "stop." Then', len('He said "stop." ')),
        ("line one\nline two", len("line one\n")),
        ("Pi is 3.14 exactly", 0),
        ("Ends with a period.", 0),  # the next delta may not start with a space
        ("Dr. Smith is here. Ok", len("Dr. Smith is here. ")),
        ("\n\nHi. There", len("\n\nHi. ")),  # no piece of whitespace alone
    ],
)
def test_sentence_cut(text: str, cut: int) -> None:
    assert sentence_cut(text) == cut


def test_length_and_word_cuts_never_split_a_word() -> None:
    assert length_cut("aaaa bbbb cccc", 7) == len("aaaa ")
    assert length_cut("aaaa bbbb cccc", 9) == len("aaaa bbbb ")  # a space right at the bound
    assert length_cut("aaaaaaaaaaaa bb", 5) == len("aaaaaaaaaaaa ")  # one long word: cut after it
    assert length_cut("aaaaaaaaaaaa", 5) == 0
    assert word_cut("one two thr") == len("one two ")
    assert word_cut("one two, ") == len("one two, ")
    assert word_cut("one two,") == len("one two,")  # punctuation ends a word
    assert word_cut("partial") == 0 and word_cut("   ") == 0


async def test_sentences_flush_as_they_end() -> None:
    text = "Hello there. I am Tony! Are you well? Good"
    assert await pieces(deltas(*words(text))) == ["Hello there. ", "I am Tony! ", "Are you well? ", "Good"]


async def test_newline_ends_a_piece_and_pieces_join_to_the_text() -> None:
    text = "First line\nSecond line\n\nThird. And the rest"
    got = await pieces(deltas(*[text[i : i + 3] for i in range(0, len(text), 3)]))
    assert "".join(got) == text
    assert got[:3] == ["First line\n", "Second line\n\n", "Third. "]


async def test_length_bound_cuts_at_the_last_space() -> None:
    text = "word " * 40 + "end"
    got = await pieces(deltas(*words(text)), max_chars=30)
    assert "".join(got) == text
    assert all(len(p) <= 30 for p in got[:-1])
    assert all(p.endswith(" ") for p in got[:-1])
    assert all(not p.startswith(" ") for p in got)


async def test_time_bound_flushes_complete_words_only() -> None:
    produced: list[str] = []  # what the model had sent when each piece came out

    async def source() -> AsyncIterator[str]:
        async for delta in deltas("So the plan ", "is", 0.25, " simple", 0.25, " enough."):
            produced.append(delta)
            yield delta

    seen: list[tuple[str, str]] = []
    async for piece in speakable(source(), max_wait_s=0.1):
        seen.append((piece, "".join(produced)))
    # "So the plan " goes out during the first pause (the bound, not the pause's end); "is" waits for its
    # space (it might have been "is" + "land"); "simple" waits for its space, then out it goes with the rest
    assert seen == [
        ("So the plan ", "So the plan is"),
        ("is ", "So the plan is simple"),
        ("simple enough.", "So the plan is simple enough."),
    ]


async def test_partial_word_waits_past_the_time_bound() -> None:
    got = await pieces(deltas("Unbeliev", 0.15, "able things happen", 0.15, " daily"), max_wait_s=0.05)
    assert got[0] == "Unbelievable things "
    assert "".join(got) == "Unbelievable things happen daily"


async def test_fast_stream_needs_no_timer() -> None:
    text = " ".join(f"w{i}" for i in range(500)) + "."
    # with an hour-long time bound only the length bound and the sentence end can cut, so a stream that
    # ends at all ends without waiting on the clock (how fast it goes: bench/speakable_rate.py)
    got = await asyncio.wait_for(pieces(deltas(*words(text)), max_wait_s=3600.0), timeout=600)
    assert len(got) > 1 and all(len(piece) <= MAX_CHARS for piece in got)
    assert "".join(got) == text


async def test_closing_early_closes_the_source() -> None:
    closed: list[bool] = []

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "Yes. "
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    stream = speakable(endless())
    assert await anext(stream) == "Yes. "
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed == [True]

"""Speakable pieces of a streamed reply, for a voice: each sentence as it completes, or, when a sentence
is slow to come or long, the words so far. A piece never ends inside a word; the pieces join to the text."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

MAX_WAIT_S = 0.3  # a voice waiting longer than this for its next words sounds hesitant
MAX_CHARS = 120

_CLOSERS = re.escape("\"')]\u201d\u2019")
_SENTENCE_END = re.compile(rf"[.!?]+[{_CLOSERS}]*\s+|\n+")
_WORD_END = re.compile(rf"[.!?,;:]+[{_CLOSERS}]*$")
# a period after these is not a sentence end ("Dr. Smith", "e.g. this")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e", "approx"}


def _lead(text: str) -> int:
    return len(text) - len(text.lstrip())


def _abbreviation(text: str, dot: int) -> bool:
    word = text[:dot].rsplit(None, 1)[-1] if text[:dot].strip() else ""
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())


def sentence_cut(text: str) -> int:
    """Where the first complete sentence of `text` ends (after its trailing space), or 0."""
    for match in _SENTENCE_END.finditer(text, _lead(text)):
        if match.group().startswith(".") and _abbreviation(text, match.start()):
            continue
        return match.end()
    return 0


def length_cut(text: str, max_chars: int) -> int:
    """Where to cut a run-on `text` of at least `max_chars`: after the last space within the bound, else
    after the first space beyond it (a very long word), else 0 (wait for the word to end)."""
    lead = _lead(text)
    for index in range(min(max_chars, len(text) - 1), lead, -1):
        if text[index].isspace():
            return index + 1
    for index in range(max_chars + 1, len(text)):
        if text[index].isspace():
            return index + 1
    return 0


def word_cut(text: str) -> int:
    """Where the last complete word of `text` ends (a space, or punctuation that ends a word), or 0."""
    if not text.strip():
        return 0
    if _WORD_END.search(text):
        return len(text)
    lead = _lead(text)
    for index in range(len(text) - 1, lead, -1):
        if text[index].isspace():
            return index + 1
    return 0


def next_cut(text: str, max_chars: int) -> int:
    return sentence_cut(text) or (length_cut(text, max_chars) if len(text) >= max_chars else 0)


async def _next(source: AsyncIterator[str]) -> str:
    return await anext(source)


async def speakable(
    deltas: AsyncIterable[str], *, max_wait_s: float = MAX_WAIT_S, max_chars: int = MAX_CHARS
) -> AsyncIterator[str]:
    """Re-chunks text deltas into speakable pieces: a sentence as soon as it ends (. ! ? then a space, or
    a newline); after `max_chars` without one, the words up to the last space; and once the first unsent
    character has waited `max_wait_s`, whatever complete words there are. The rest comes at the end."""
    source = aiter(deltas)
    loop = asyncio.get_running_loop()
    buffer = ""
    since = 0.0  # when the first unsent character arrived
    stalled = False  # the time bound passed with no complete word to send: wait for more text
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(source))
            timeout = None if stalled or not buffer.strip() else max(0.0, since + max_wait_s - loop.time())
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if done:
                try:
                    text = pending.result()
                except StopAsyncIteration:
                    pending = None
                    break
                pending = None
                if not text:
                    continue
                if not buffer.strip():
                    since = loop.time()
                buffer += text
                stalled = False
                while cut := next_cut(buffer, max_chars):
                    yield buffer[:cut]
                    buffer = buffer[cut:]
                    since = loop.time()
            elif cut := word_cut(buffer):
                yield buffer[:cut]
                buffer = buffer[cut:]
                since = loop.time()
            else:
                stalled = True
        if buffer:
            yield buffer
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(source, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()

"""The digest of a persona's recent life that goes into its prompt: what it read (with its take),
fresh reflections, goals at risk, the latest journal lines and its last post. Most important first;
the prompt builder keeps as much as the persona's token budget has room for."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from troupe.store import Store

log = logging.getLogger(__name__)

AT_RISK = "At risk: "


async def life_digest(store: Store, persona: str) -> tuple[str, ...]:
    lines: list[str] = []
    read = await store.news_read(persona, limit=6)
    for item in read[:3]:
        lines.append(f"You read '{item.title}' ({item.url}). Your take: {item.take}")
    reflections = await store.recall(persona, subject="self", limit=3)
    lines.extend(f"Your reflection: {m.content}" for m in reflections if m.kind == "reflection")
    goals = await store.life_runs(persona, "goals", limit=1)
    if goals and goals[0].status == "completed" and AT_RISK in goals[0].output:
        lines.append("Your goals at risk: " + goals[0].output.split(AT_RISK, 1)[1].strip())
    journal = await store.life_runs(persona, "journal", limit=1)
    if journal and journal[0].status == "completed" and journal[0].output:
        lines.append(f"From your journal: {journal[0].output}")
    posts = await store.posts(persona, limit=1)
    if posts and posts[0].status != "blocked":
        lines.append(f"You posted: {posts[0].text}")
    for item in read[3:]:
        lines.append(f"You also read '{item.title}' ({item.url}).")
    return tuple(lines)


DIGEST_FRESH_S = 30.0  # how stale a digest a session may put in its prompt (life activities run minutes apart)


class DigestCache:
    """Each persona's digest, read once per process and kept for DIGEST_FRESH_S: a session binding a
    caller takes it from here instead of six reads on the caller's first turn. A stale one is served
    while a fresh one is read behind it; one read per persona is in flight at a time."""

    def __init__(self, fresh_s: float = DIGEST_FRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.fresh_s = fresh_s
        self.clock = clock
        self._kept: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._reading: dict[str, asyncio.Task[tuple[str, ...]]] = {}

    async def get(self, store: Store, persona: str) -> tuple[str, ...]:
        kept = self._kept.get(persona)
        if kept is not None:
            if self.clock() - kept[0] >= self.fresh_s:
                # served stale this once; fresh from the next turn (a failed read keeps the old one)
                self._read(store, persona).add_done_callback(_quietly)
            return kept[1]
        return await asyncio.shield(self._read(store, persona))

    def _read(self, store: Store, persona: str) -> asyncio.Task[tuple[str, ...]]:
        reading = self._reading.get(persona)
        if reading is None:
            reading = self._reading[persona] = asyncio.ensure_future(self._fetch(store, persona))
        return reading

    async def _fetch(self, store: Store, persona: str) -> tuple[str, ...]:
        try:
            digest = await life_digest(store, persona)
            self._kept[persona] = (self.clock(), digest)
            return digest
        finally:
            self._reading.pop(persona, None)


def _quietly(task: asyncio.Task[tuple[str, ...]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a life digest could not be read: %s", task.exception())

"""The digest of a persona's recent life that goes into its prompt: what it read (with its take),
fresh reflections, goals at risk, the latest journal lines and its last post. Most important first;
the prompt builder keeps as much as the persona's token budget has room for."""

from __future__ import annotations

import asyncio

from troupe.store import Store

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


class DigestCache:
    """Each persona's digest, read once per process and per version of its life: a session binding a
    caller gives the version it read with the caller's conversation (`Store.conversation`: how many life
    runs the persona has had, and when the last one finished) and gets the digest from here, instead of
    six reads on the caller's first turn. A new activity run makes a new version, so a caller never hears
    an old digest. One read per persona is in flight at a time."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[str, tuple[str, ...]]] = {}  # persona -> (version, digest)
        self._reading: dict[tuple[str, str], asyncio.Task[tuple[str, ...]]] = {}

    async def get(self, store: Store, persona: str, version: str) -> tuple[str, ...]:
        kept = self._kept.get(persona)
        if kept is not None and kept[0] == version:
            return kept[1]
        reading = self._reading.get((persona, version))
        if reading is None:
            reading = self._reading[(persona, version)] = asyncio.ensure_future(self._fetch(store, persona, version))
        return await asyncio.shield(reading)

    async def _fetch(self, store: Store, persona: str, version: str) -> tuple[str, ...]:
        try:
            digest = await life_digest(store, persona)
            self._kept[persona] = (version, digest)
            return digest
        finally:
            self._reading.pop((persona, version), None)

"""Consolidation: troupe's sleep-time agent. Between conversations, a persona goes over what it learnt
since it last did: near-duplicate facts are merged (the newer supersedes the older), contradictions its
model points out are resolved the same way, and the core blocks always in the prompt are rewritten
from what is live (the caller's: their most important facts; the persona's own: its latest knowledge)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from troupe.core.prompt import CORE_BLOCK_CHARS
from troupe.store import SELF, MemoryRecord

DUPLICATE = 0.9  # cosine at which two facts about one person say the same thing
FACTS_SHOWN = 40  # the most facts about one person its model is asked to check for contradictions

Write = Callable[[str], Awaitable[str]]  # the persona's model, given a brief


@dataclass
class Tally:
    subjects: int = 0
    merged: int = 0
    resolved: int = 0
    blocks: int = 0

    def report(self) -> str:
        if not self.subjects:
            return "Nothing new to consolidate."
        return (
            f"Consolidated what changed about {self.subjects} subject(s): merged {self.merged} duplicate(s), "
            f"resolved {self.resolved} contradiction(s), rewrote {self.blocks} core block(s)."
        )


async def consolidate(store: Any, persona: str, since: datetime | None, write: Write | None) -> str:
    """One pass over the subjects with memories newer than `since`; returns what it did, for the log."""
    tally = Tally()
    for subject in await store.memory_changed_since(persona, since):
        tally.subjects += 1
        if subject == SELF or subject.startswith("life:"):
            tally.blocks += await _own_block(store, persona)
            continue
        for older, newer in await store.duplicates(persona, subject, layer="profile", threshold=DUPLICATE):
            tally.merged += await store.supersede(persona, older, newer)
        facts = await store.memories_of(persona, subject, layer="profile", live=True, limit=FACTS_SHOWN)
        if write is not None and len(facts) > 1:
            for older, newer in await _contradictions(write, subject, facts):
                tally.resolved += await store.supersede(persona, older, newer)
            facts = await store.memories_of(persona, subject, layer="profile", live=True, limit=FACTS_SHOWN)
        block = core_block(facts)
        if block != await store.memory_block(persona, subject):
            await store.set_memory_block(persona, subject, block)
            tally.blocks += 1
    return tally.report()


def core_block(facts: list[MemoryRecord]) -> str:
    """The caller's block: their live facts, the most important first (then the newest), as many as fit."""
    ranked = sorted(facts, key=lambda m: (-m.importance, -m.created_at.timestamp()))
    lines: list[str] = []
    used = 0
    for fact in ranked:
        line = f"- {fact.content.strip()}"
        if used + len(line) + 1 > CORE_BLOCK_CHARS:
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


async def _own_block(store: Any, persona: str) -> int:
    knowledge = await store.memories_of(persona, SELF, layer="knowledge", live=True, limit=12)
    block = core_block(knowledge)
    if block == await store.memory_block(persona, SELF):
        return 0
    await store.set_memory_block(persona, SELF, block)
    return 1


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


async def _contradictions(write: Write, subject: str, facts: list[MemoryRecord]) -> list[tuple[int, int]]:
    """Pairs (outdated, the fact that replaces it) the persona's model finds among one person's facts; a
    reply that is not the JSON asked for finds none."""
    listed = "\n".join(
        f'{{"id": {m.id}, "fact": {json.dumps(m.content)}, "learnt": "{m.created_at:%Y-%m-%d}"}}'
        for m in sorted(facts, key=lambda m: m.id)
    )
    brief = (
        f"These are the facts you keep about {subject}. Some may contradict others (a newer one replaces an "
        'older). Reply with JSON only: {"outdated": [{"id": <the outdated fact>, "by": <the fact replacing '
        "it>}]}; an empty list when none are.\n\n" + listed
    )
    found = _OBJECT.search(await write(brief) or "")
    try:
        data = json.loads(found.group(0)) if found else {}
    except ValueError:
        return []
    ids = {m.id for m in facts}
    pairs = []
    for item in data.get("outdated") or [] if isinstance(data, dict) else []:
        if isinstance(item, dict) and item.get("id") in ids and item.get("by") in ids and item["id"] != item["by"]:
            pairs.append((int(item["id"]), int(item["by"])))
    return pairs

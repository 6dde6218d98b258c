"""Persona memory: the summaries, facts and reflections a persona keeps per subject, recalled by
subject and ranked by word overlap with a query; the MemoryStore mixin of Store."""

from __future__ import annotations

import re

from sqlalchemy import select

from troupe.store.engine import StoreBase
from troupe.store.records import MemoryRecord, _record
from troupe.store.schema import MemoryRow

_WORD = re.compile(r"[a-z0-9]{3,}")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class MemoryStore(StoreBase):
    async def add_memory(
        self, persona: str, subject: str, content: str, *, kind: str = "note", source: str = ""
    ) -> MemoryRecord:
        async with self.sessions() as db:
            row = MemoryRow(persona=persona, subject=subject[:200], kind=kind, content=content, source=source[:200])
            db.add(row)
            await db.commit()
            return _record(MemoryRecord, row)

    async def recall(
        self, persona: str, *, subject: str | None = None, query: str | None = None, limit: int = 8
    ) -> list[MemoryRecord]:
        """Memories of `persona`, filtered by subject, ranked by word overlap with `query`, newest first."""
        async with self.sessions() as db:
            stmt = select(MemoryRow).where(MemoryRow.persona == persona)
            if subject is not None:
                stmt = stmt.where(MemoryRow.subject == subject)
            stmt = stmt.order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc()).limit(500)
            rows = list((await db.execute(stmt)).scalars())
        if query:
            wanted = _words(query)
            scored = [
                (len(wanted & _words(row.content + " " + row.subject)), index, row) for index, row in enumerate(rows)
            ]
            scored = [item for item in scored if item[0] > 0]
            scored.sort(key=lambda item: (-item[0], item[1]))
            rows = [row for _, _, row in scored]
        return [_record(MemoryRecord, row) for row in rows[:limit]]

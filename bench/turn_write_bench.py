"""What keeping a turn's figures costs on the hot path: a turn's write (its input and reply, the one
transaction every turn makes) timed with and without its row in `turns`, on SQLite and, when
TROUPE_TEST_POSTGRES_URL is set, PostgreSQL. Prints medians and p90 in microseconds, interleaved so the
two variants see the same machine.

    python bench/turn_write_bench.py [--turns 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from troupe.core.chat import ChatMessage
from troupe.core.messages import TurnStats
from troupe.store import Store


async def measure(url: str, turns: int) -> dict[str, list[float]]:
    store = await Store.open(url)
    try:
        caller, session = f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        await store.create_session(caller, "Tony", "p1", session_id=session)
        times: dict[str, list[float]] = {"without": [], "with": []}
        for i in range(turns):
            reply = "An answer of a dozen words or so, as a turn has."
            messages = [ChatMessage(role="user", content=f"question {i}"), ChatMessage(role="assistant", content=reply)]
            figures = TurnStats(turn_id=f"t{i}", persona="Tony", ttft_ms=120, duration_ms=900, input_tokens=400,
                                output_tokens=20, cost_usd=0.0001)  # fmt: skip
            for variant in ("without", "with") if i % 2 else ("with", "without"):
                stats = figures if variant == "with" else None
                began = time.perf_counter()
                await store.append_messages(session, messages, turn_id=f"t{i}", reply_from=1, stats=stats)
                times[variant].append((time.perf_counter() - began) * 1e6)
        await store.erase_caller(caller)  # what it wrote goes (a shared database stays as it was)
        return times
    finally:
        await store.close()


def report(name: str, times: dict[str, list[float]]) -> None:
    def figures(values: list[float]) -> str:
        values = sorted(values[len(values) // 10 :])  # the first tenth warms the caches
        return f"p50 {statistics.median(values):7.0f} µs  p90 {values[int(len(values) * 0.9)]:7.0f} µs"

    without, with_ = times["without"], times["with"]
    ratio = statistics.median(with_) / statistics.median(without)
    print(f"{name:10s} without the turn row: {figures(without)}")
    print(f"{name:10s} with the turn row:    {figures(with_)}   ({ratio:.2f}x the median)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=2000)
    turns = parser.parse_args().turns
    with tempfile.TemporaryDirectory() as tmp:
        report("SQLite", await measure(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", turns))
    if url := os.environ.get("TROUPE_TEST_POSTGRES_URL"):
        url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        report("PostgreSQL", await measure(url, turns))


if __name__ == "__main__":
    asyncio.run(main())

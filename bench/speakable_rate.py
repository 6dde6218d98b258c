"""How fast the speakable re-chunking (the ElevenLabs door's) gets through a reply whose tokens are all
ready at once: 500 words as word-sized deltas, through speakable() with its default bounds. Prints the
median and max time per reply and per delta over the runs.

Run: .venv/bin/python bench/speakable_rate.py [--runs 50] [--words 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

from troupe.clients.speakable import speakable


async def instant(parts: list[str]) -> AsyncIterator[str]:
    for part in parts:
        yield part


async def one(parts: list[str]) -> float:
    began = time.perf_counter()
    async for _ in speakable(instant(parts)):
        pass
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--words", type=int, default=500)
    args = parser.parse_args()
    parts = [f"w{i} " for i in range(args.words - 1)] + [f"w{args.words - 1}."]
    times = [asyncio.run(one(parts)) for _ in range(args.runs)]
    median = statistics.median(times)
    print(
        f"speakable over {args.words} instant deltas: median {median * 1000:.1f} ms per reply "
        f"({median * 1e6 / args.words:.1f} us per delta), max {max(times) * 1000:.1f} ms over {args.runs} runs"
    )


if __name__ == "__main__":
    main()

"""How long a news run waits on feeds that are down, slow, trickling, malformed or too big: fetch_all
over good and broken sources from the fixture feeds server on loopback, against a per-source timeout.
Prints the median and max time of a whole fetch beside the timeout and the slow server's sleep.

Run: .venv/bin/python bench/news_fetch.py [--runs 10] [--timeout 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from troupe.life.news import fetch_all
from troupe.testing.fake_feeds import FakeFeedsServer

BROKEN = ("down", "slow.xml", "trickle.xml", "malformed.xml", "huge.xml")


async def run(feeds: FakeFeedsServer, runs: int, timeout_s: float) -> list[float]:
    sources = [feeds.url("rss.xml"), *(feeds.url(path) for path in BROKEN), feeds.url("feed.json")]
    took = []
    async with httpx.AsyncClient() as client:
        for _ in range(runs):
            began = time.perf_counter()
            items, failures = await fetch_all(client, sources, timeout_s=timeout_s, max_bytes=200_000)
            took.append(time.perf_counter() - began)
            assert items and len(failures) == len(BROKEN), failures
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    with FakeFeedsServer() as feeds:
        took = asyncio.run(run(feeds, args.runs, args.timeout))
        sleep = feeds.feeds.slow_delay_s
    median = statistics.median(took)
    print(f"fetch of 2 good + {len(BROKEN)} broken sources: median {median:.2f} s, max {max(took):.2f} s "
          f"over {len(took)} runs; per-source timeout {args.timeout:g} s ({median / args.timeout:.2f}x), "
          f"slow server's sleep {sleep:g} s")  # fmt: skip


if __name__ == "__main__":
    main()

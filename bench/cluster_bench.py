"""troupe beyond one machine (issue 15): turns per second and time to first token at 16 and 64 streams,
on a Ray cluster of 1 node against 2 nodes (Ray's `Cluster` helper: each node a raylet of its own, both
on this machine), with 1 door replica against 2, and PostgreSQL as the store in every run. The upstream
takes 50 ms to its first token and streams 20 tokens.

This machine has 2 cores, so a second node adds no CPU: the figures are ratios against the 1-node,
1-replica run, with what saturates (the machine's CPU and the roles that used it), not a speed-up.

Run: PYTHONPATH=. .venv/bin/python bench/cluster_bench.py [--requests 192]
     (TROUPE_TEST_POSTGRES_URL names a PostgreSQL to use; else tests/pg_server.sh starts one)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import door_bench  # beside this file, which runs as a script
import psutil

from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.loopback import free_port

CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2))  # (nodes, door replicas)
STREAMS = (16, 64)


def postgres() -> str:
    url = os.environ.get("TROUPE_TEST_POSTGRES_URL")
    if url:
        return url
    started = subprocess.run(["bash", "tests/pg_server.sh", "start"], capture_output=True, text=True, check=True)
    return started.stdout.strip()


@contextmanager
def database(base: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(base)
        await connection.execute(sql)
        await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield "postgresql+asyncpg://" + base.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def cluster(nodes: int) -> Iterator[str]:
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    for _ in range(nodes - 1):
        made.add_node(num_cpus=2)
    made.wait_for_nodes()
    try:
        yield made.address
    finally:
        made.shutdown()


@contextmanager
def troupe(address: str, replicas: int, store: str, upstream: str) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="troupe-cluster-bench-", ignore_cleanup_errors=True) as data:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TROUPE_", "RAY_"))},
            **door_bench.TROUPE_ENV,
            "RAY_ADDRESS": address,
            "TROUPE_DATABASE_URL": store,
            "TROUPE_DOOR_REPLICAS": str(replicas),
            "TROUPE_PLACEMENT": "spread",
            "TROUPE_SESSION_POOL_SIZE": "8",
            "OPENAI_BASE_URL": upstream,
            "TROUPE_DATA_DIR": data,
        }
        command = [door_bench.PY, "-m", "troupe.cli", "serve", "--port", str(port), "--insecure"]
        with door_bench.running(command, f"http://127.0.0.1:{port}/ready", env):
            yield f"http://127.0.0.1:{port}{door_bench.COMPLETIONS}"


def run(nodes: int, replicas: int, requests: int, base: str, upstream: str) -> dict[int, door_bench.Figures]:
    figures: dict[int, door_bench.Figures] = {}
    with database(base) as store, cluster(nodes) as address, troupe(address, replicas, store, upstream) as url:
        for streams in STREAMS:
            psutil.cpu_percent()  # start the machine-wide interval
            began = time.perf_counter()
            figures[streams] = asyncio.run(
                door_bench.load(url, streams, max(requests, streams * 3), settle=3.0, identified=True)
            )
            figures[streams]["machine_cpu"] = psutil.cpu_percent()
            figures[streams]["wall"] = time.perf_counter() - began
            print_row(nodes, replicas, streams, figures[streams], None)
    return figures


def busiest(f: door_bench.Figures) -> str:
    roles = sorted(((v, k[4:]) for k, v in f.items() if k.startswith("cpu ")), reverse=True)[:3]
    return ", ".join(f"{name} {ms:.1f}" for ms, name in roles)


def print_row(nodes: int, replicas: int, streams: int, f: door_bench.Figures, base: door_bench.Figures | None) -> None:
    ratio = f"{f['rate'] / base['rate']:.2f}x" if base else "-"
    print(
        f"{nodes} node(s), {replicas} replica(s), c={streams:<3} {f['rate']:6.1f} turns/s ({ratio:>5} of 1x1)"
        f"  TTFT p50 {f['ttft_p50']:7.1f} ms  p99 {f['ttft_p99']:7.1f} ms  machine CPU {f['machine_cpu']:3.0f}%"
        f"  ms/turn by role: {busiest(f)}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=192, help="streams per pass (at least 3 per caller)")
    args = parser.parse_args()
    base = postgres()
    results: dict[tuple[int, int], dict[int, door_bench.Figures]] = {}
    with FakeOpenAIServer(Behaviour(tokens=20, ttft_s=0.05)) as upstream:
        for nodes, replicas in CONFIGS:
            print(f"--- {nodes} node(s), {replicas} door replica(s), PostgreSQL", flush=True)
            results[(nodes, replicas)] = run(nodes, replicas, args.requests, base, upstream.base_url)
    print("\nSummary (same run; ratios against 1 node, 1 replica at the same concurrency)")
    for (nodes, replicas), passes in results.items():
        for streams, f in passes.items():
            print_row(nodes, replicas, streams, f, results[(1, 1)][streams])


if __name__ == "__main__":
    main()

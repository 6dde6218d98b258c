"""PostgreSQL connections when many troupe processes share one server: 150 sessions' store traffic
from many OS processes, each with its own engine as troupe's actor processes have.

Each run forks `--processes` workers that act like session actors (each opens its own Store, binds its
share of the 150 sessions and writes their turns through the real API: conversation, open_session,
append_messages per turn, end_session; every fifth caller has no identity and is kept in one
keep_one_turn) and `--idle` processes that only open a store and ping it, like the orchestrator,
personas and life loops between their writes. Meanwhile the parent samples
`SELECT count(*) FROM pg_stat_activity WHERE datname = <the bench's database>` every 20 ms.

Printed per pool configuration: the peak connection count, the server's max_connections, the bound
processes x (pool_size + max_overflow), the store's write latency p50/p99 and the writes that failed
(StoreUnavailable: busy, or the server refusing a connection).

Run: .venv/bin/python bench/pg_connections.py [--url postgresql://...] [--processes 60 --idle 20]
Without --url (or TROUPE_TEST_POSTGRES_URL) it starts a throwaway PostgreSQL with the stock
max_connections=100 (needs initdb, as tests/pg_server.sh does). One run on 2 cores takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from troupe.core.chat import ChatMessage
from troupe.core.errors import StoreUnavailable
from troupe.store import Store, StoreOptions

SESSIONS = 150
ONE_TURN_EVERY = 5  # every fifth caller has no identity: a one-turn conversation in one write


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else list(command)


@contextmanager
def throwaway_server(max_connections: int) -> Iterator[str]:
    """A PostgreSQL of our own on a free port with stock settings but max_connections; removed after."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        raise SystemExit("no PostgreSQL binaries: install postgresql or pass --url")
    bin_dir = bins[-1]
    data = Path(tempfile.mkdtemp(prefix="troupe-pgbench-"))
    if os.getuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run(
            _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}"
        subprocess.run(
            _as_postgres(
                str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o", options, "start"
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(data, ignore_errors=True)


def _async_url(url: str, database: str) -> str:
    return "postgresql+asyncpg://" + url.split("://", 1)[1].rsplit("/", 1)[0] + f"/{database}"


async def _timed(latencies: list[float], errors: list[str], work: Any) -> None:
    began = time.perf_counter()
    try:
        await work
    except StoreUnavailable as exc:
        # a turn of a session whose open failed finds no session: counted as that, not by its id
        errors.append("no session (its open failed)" if exc.message.startswith("no session") else exc.message)
        return
    except Exception as exc:  # counted and named, so a run that fails says how
        errors.append(type(exc).__name__)
        return
    latencies.append(time.perf_counter() - began)


async def _session(store: Store, n: int, turns: int, think_s: float, latencies: list[float], errors: list[str]) -> None:
    caller, persona, process = f"+1415555{n:04d}", ("Tony", "Maya", "Rex")[n % 3], uuid.uuid4().hex[:8]
    session_id = uuid.uuid4().hex
    await asyncio.sleep(random.uniform(0, think_s))
    if n % ONE_TURN_EVERY == 0:
        said = (ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="Hello there."))
        await _timed(
            latencies, errors, store.keep_one_turn(session_id, f"anon-{n}", persona, process, said, turn_id="t0")
        )
        return
    await _timed(latencies, errors, store.conversation(caller, persona))
    await _timed(
        latencies, errors, store.open_session(session_id, caller, persona, process, resumed=False, identified=True)
    )
    for turn in range(turns):
        await asyncio.sleep(random.uniform(0.5, 1.5) * think_s)  # the caller speaking, the model answering
        said = [ChatMessage(role="user", content=f"question {turn}"), ChatMessage(role="assistant", content="x" * 200)]
        await _timed(latencies, errors, store.append_messages(session_id, said, turn_id=f"t{turn}", reply_from=1))
    await _timed(latencies, errors, store.end_session(session_id, "a short chat"))


def _worker(url: str, options: StoreOptions, sessions: list[int], args: Any, barrier: Any, results: Any) -> None:
    async def run() -> tuple[list[float], list[str]]:
        # asyncpg leaves a future behind when the server refuses a connection mid-handshake: not news here
        asyncio.get_running_loop().set_exception_handler(lambda _loop, _context: None)
        latencies: list[float] = []
        errors: list[str] = []
        try:
            store = await Store.open(url, migrate=False, options=options)
        except StoreUnavailable as exc:
            barrier.wait()
            return [], [exc.message]
        try:
            await store.ping()  # every actor process talks to the store once it starts
            barrier.wait()
            if not sessions:  # an idle process (orchestrator, persona, life loop): holds its pool open
                await asyncio.sleep(args.turns * args.think)
            await asyncio.gather(*(_session(store, n, args.turns, args.think, latencies, errors) for n in sessions))
        finally:
            await store.close()
        return latencies, errors

    results.put(asyncio.run(run()))


async def _sample(base: str, database: str, stop: asyncio.Event) -> tuple[int, int]:
    conn = await asyncpg.connect(base)  # on the server's own database: not counted
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        peak = 0
        while not stop.is_set():
            count = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database)
            peak = max(peak, int(count))
            await asyncio.sleep(0.02)
        return peak, limit
    finally:
        await conn.close()


def run_config(base: str, label: str, options: StoreOptions, args: Any) -> None:
    database = f"pgbench_{uuid.uuid4().hex[:8]}"

    async def setup() -> None:
        admin = await asyncpg.connect(base)
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        store = await Store.open(_async_url(base, database), migrate=True)
        await store.close()

    asyncio.run(setup())
    url = _async_url(base, database)
    context = multiprocessing.get_context("fork")  # the modules are imported once, in the parent
    total = args.processes + args.idle
    barrier, results = context.Barrier(total), context.Queue()
    shares: list[list[int]] = [[] for _ in range(args.processes)]
    for n in range(SESSIONS):
        shares[n % args.processes].append(n)
    workers = [
        context.Process(target=_worker, args=(url, options, share, args, barrier, results))
        for share in shares + [[] for _ in range(args.idle)]
    ]

    async def observe() -> tuple[int, int, list[Any], float]:
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(_sample(base, database, stop))
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        outcomes = [await asyncio.to_thread(results.get, True, 300) for _ in workers]
        elapsed = time.perf_counter() - began
        stop.set()
        peak, limit = await sampler
        return peak, limit, outcomes, elapsed

    peak, limit, outcomes, elapsed = asyncio.run(observe())
    for worker in workers:
        worker.join(30)
    latencies = sorted(s for lat, _ in outcomes for s in lat)
    errors = Counter(e.split(" (this process")[0] for _, err in outcomes for e in err)
    bound = total * (options.pool_size + options.max_overflow)
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    print(
        f"{label:<28} processes {total:>3}  peak connections {peak:>3}  max_connections {limit}  "
        f"bound {total} x ({options.pool_size}+{options.max_overflow}) = {bound:>4}  "
        f"writes {len(latencies):>4}  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  failed {errors.total()}"
        + f"  [{elapsed:.1f} s, load {os.getloadavg()[0]:.1f}]"
        + "".join(f"\n    {count:>4} x {error}" for error, count in errors.most_common()),
        flush=True,
    )

    async def teardown() -> None:
        admin = await asyncpg.connect(base)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()

    asyncio.run(teardown())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("TROUPE_TEST_POSTGRES_URL"), help="an existing server")
    parser.add_argument("--max-connections", type=int, default=100, help="for the throwaway server")
    parser.add_argument("--processes", type=int, default=60, help="session-actor-like processes writing turns")
    parser.add_argument("--idle", type=int, default=20, help="processes that only hold a store open")
    parser.add_argument("--turns", type=int, default=6, help="turns per identified session")
    parser.add_argument("--think", type=float, default=0.5, help="seconds between a session's turns (about)")
    args = parser.parse_args()
    configs = [
        ("troupe default (1+0)", StoreOptions(application_name="troupe-bench")),
        ("pool 1+2", StoreOptions(pool_size=1, max_overflow=2, application_name="troupe-bench")),
        ("before: pool 5+5", StoreOptions(pool_size=5, max_overflow=5, application_name="troupe-bench")),
    ]
    print(
        f"{SESSIONS} sessions ({SESSIONS // ONE_TURN_EVERY} one-turn), {args.turns} turns each, ~{args.think} s apart"
    )
    if args.url:
        for label, options in configs:
            run_config(args.url, label, options, args)
        return
    with throwaway_server(args.max_connections) as base:
        for label, options in configs:
            run_config(base, label, options, args)


if __name__ == "__main__":
    main()

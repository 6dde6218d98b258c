"""The door's cost against its floors (issue 14): streaming clients against an upstream with a fixed
time to first token (50 ms, 20 tokens), directly; through do-nothing pass-throughs (uvicorn; Ray Serve
in troupe's throughput-optimized direct-ingress mode, and with Serve's defaults); through troupe's
uvicorn and Serve doors, each measured right after its floor; and through LiteLLM's proxy (1 worker).

Prints TTFT added (p50, p99) and streams/s vs upstream at concurrency 1 and 16, for troupe also 16
anonymous callers (each a one-turn session) and the CPU each stream cost by process role; then each
door against its floor, the c=1 goal and LiteLLM, PASS or MISS against issue 14's goals.
`--soak-minutes N` instead runs 16 streams against one door for N minutes and prints troupe's RSS.

Run: .venv/bin/python bench/door_bench.py [--requests 96] [--only uvicorn serve ...] [--no-litellm]
     .venv/bin/python bench/door_bench.py --soak-minutes 10 [--door uvicorn|serve]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

import httpx
import litellm_floor  # beside this file, which runs as a script

from troupe.testing.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PASSTHROUGH = str(ROOT / "bench" / "passthrough.py")
COMPLETIONS = "/v1/chat/completions"
POOL_SIZE = re.compile(r"^troupe_session_pool_size (\S+)$", re.MULTILINE)
BODY = {"model": "tony", "stream": True, "messages": [{"role": "user", "content": "Give me a status update."}]}
TEXT = re.compile(r'"content":\s*"[^"]')  # a delta that carries text, however the JSON is spaced
TROUPE_ENV = {"OPENAI_API_KEY": "bench", "TROUPE_MODEL": "gpt-4o-mini", "TROUPE_RATE_LIMIT_PER_MINUTE": "0",
              "TROUPE_SESSION_POOL_SIZE": "4", "TROUPE_LIFE_LOOPS_ENABLED": "false"}  # fmt: skip

UPSTREAM, LITELLM = "upstream (direct)", "LiteLLM proxy, 1 worker"
FLOORS = {"uvicorn": "pass-through, uvicorn", "serve": "pass-through, Serve optimized"}
DOORS = {"uvicorn": "troupe, uvicorn door", "serve": "troupe, Serve door"}
SERVE_DEFAULTS = "pass-through, Serve defaults"  # not a floor: what Serve costs untuned
PHASES = ("uvicorn", "serve", "serve-defaults", "litellm")
# issue 14's goals: added TTFT p50 and p99 over the door's floor (ms), and streams/s as a share of it
GOALS = {"uvicorn": (5.0, 30.0, 0.8), "serve": (10.0, 50.0, 0.8)}
ONE_CALLER_MS, LITELLM_RATIO, CPU_MS, RSS_PCT = 3.0, 3.0, 6.0, 2.0
PASS_LIMIT_S = 120  # a door that hangs or fails is reported, not waited for; half of it for the warm-up
TROUPE_ROLES = ("troupe process", "door (Serve replica)", "session actors", "orchestrator", "other actors",
                "idle workers", "ray system")  # fmt: skip

Figures = dict[str, float]
Passes = dict[str, Figures]  # "c=1", "c=16", and for troupe "c=16 anon"


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- the load


class Failed(Exception):
    """A stream that did not complete: its status and the start of its body, or the transport error."""


async def one(client: httpx.AsyncClient, url: str, caller: str | None) -> tuple[float, float]:
    """One stream: seconds to the first text delta and to the end. `caller` None is anonymous."""
    began = time.perf_counter()
    first = None
    headers = {"X-Request-ID": caller} if caller else {}
    try:
        async with client.stream("POST", url, json=BODY, headers=headers) as response:
            if response.status_code >= 400:
                raise Failed(f"{response.status_code} {(await response.aread()).decode(errors='replace')[:160]}")
            async for line in response.aiter_lines():
                if first is None and line.startswith("data: ") and TEXT.search(line):
                    first = time.perf_counter()
    except httpx.HTTPError as error:
        raise Failed(f"{type(error).__name__} {error}") from error
    end = time.perf_counter()
    return (first or end) - began, end - began


async def pool_settled(client: httpx.AsyncClient, url: str, steady_s: float = 3.0, limit_s: float = 90.0) -> float:
    """Wait until troupe's warm pool has stopped growing (`troupe_session_pool_size` the same for
    `steady_s`): after a burst of new callers it starts actors up to the new demand, each a process
    start (about 2 s of CPU here), and a pass measured meanwhile measures the start-ups. Returns how
    long the pool kept changing, in seconds; 0 for a door with no such metric (a pass-through)."""
    metrics_url = url.removesuffix(COMPLETIONS) + "/metrics"
    began = time.monotonic()
    last, since = None, began
    while time.monotonic() - began < limit_s:
        response = await client.get(metrics_url)
        now = POOL_SIZE.search(response.text) if response.status_code == 200 else None
        if now is None:
            return 0.0
        if now[1] != last:
            last, since = now[1], time.monotonic()
        elif time.monotonic() - since >= steady_s:
            break
        await asyncio.sleep(0.5)
    return since - began


def client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    return httpx.AsyncClient(timeout=30, limits=limits)


async def load(url: str, concurrency: int, requests: int, settle: float, identified: bool) -> Figures:
    """Streams from `concurrency` callers, each one after another. A failed stream is left out of the
    figures and counted; a failed warm-up is retried (a session may still be starting)."""

    def caller(w: int) -> str | None:
        return f"bench-{w}" if identified else None

    results: list[tuple[float, float]] = []
    failures: list[str] = []

    async def attempt(http: httpx.AsyncClient, w: int) -> tuple[float, float] | None:
        try:
            return await one(http, url, caller(w))
        except Failed as failure:
            failures.append(str(failure))
            return None

    async def warm_up(http: httpx.AsyncClient, w: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if await attempt(http, w) is not None:
                return
            await asyncio.sleep(1)

    async with client(concurrency) as http:
        # every worker's session exists and connections are open; then the warm pool refills
        warm_until = time.monotonic() + PASS_LIMIT_S / 2
        await asyncio.gather(*(warm_up(http, w, warm_until) for w in range(concurrency)))
        await asyncio.sleep(settle)
        if (grew := await pool_settled(http, url)) > 1:
            print(f"  (the warm pool grew for {grew:.0f} s after the warm-up; measured after)", flush=True)
        if failures:
            print(f"  ({len(failures)} warm-up streams failed, retried for up to {PASS_LIMIT_S / 2:g} s; "
                  f"first: {failures[0]})", flush=True)  # fmt: skip
            failures.clear()
        cpu_before = snapshot()

        async def worker(w: int) -> None:
            for _ in range(requests // concurrency):
                if time.perf_counter() - began > PASS_LIMIT_S:
                    cut.append(w)
                    return
                if (result := await attempt(http, w)) is not None:
                    results.append(result)

        cut: list[int] = []
        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - began
    if failures or cut:
        print(f"  ({len(failures)} streams failed, {len(cut)} callers cut short at {PASS_LIMIT_S} s; first failure: "
              f"{failures[:1]})", flush=True)  # fmt: skip
    if not results:
        raise RuntimeError(f"every stream to {url} failed")
    ttft = sorted(r[0] for r in results)
    total = sorted(r[1] for r in results)
    return {
        **{f"cpu {k}": v for k, v in cpu_by_role(cpu_before, snapshot(), len(results)).items()},
        "ttft_p50": statistics.median(ttft) * 1000,
        "ttft_p99": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))] * 1000,
        "total_p50": statistics.median(total) * 1000,
        "rate": len(results) / wall,
    }


def measure(url: str, requests: int, settle: float = 0.0, anonymous: bool = False) -> Passes:
    passes = {"c=1": asyncio.run(load(url, 1, max(20, requests // 4), settle, identified=True)),
              "c=16": asyncio.run(load(url, 16, requests, settle, identified=True))}  # fmt: skip
    if anonymous:
        passes["c=16 anon"] = asyncio.run(load(url, 16, requests, settle, identified=False))
    return passes


# --- the bench's processes, from /proc


class Proc(NamedTuple):
    ppid: int
    role: str
    cpu: float  # seconds used so far
    rss: float  # MiB


def snapshot() -> dict[int, Proc]:
    """The bench's process and all its descendants (the client, upstream, servers and their Ray)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    table: dict[int, Proc] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        table[int(pid)] = Proc(int(fields[1]), role(name, command), cpu, resident * page / 2**20)
    return descendants(table, os.getpid())


def descendants(table: dict[int, Proc], root: int) -> dict[int, Proc]:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, proc in table.items():
        children[proc.ppid].append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[pid] = table[pid]
            todo.extend(children[pid])
    return found


def role(name: str, command: str) -> str:
    for key, label in (("ServeRepli", "door (Serve replica)"), ("troupe.cli", "troupe process"),
                       ("SessionAct", "session actors"), ("Orchestrat", "orchestrator"), ("DashboardA", "ray system"),
                       ("RuntimeEnv", "ray system"), ("ray::IDLE", "idle workers"), ("ray::", "other actors"),
                       ("fake_openai", "upstream"), ("door_bench", "client"), ("raylet", "ray system"),
                       ("gcs_server", "ray system"), ("/ray/", "ray system")):  # fmt: skip
        if key in name or key in command:
            return label
    return "other"


def by_role(procs: dict[int, Proc], value: dict[int, float]) -> dict[str, float]:
    summed: dict[str, float] = defaultdict(float)
    for pid, amount in value.items():
        summed[procs[pid].role] += amount
    return dict(sorted(summed.items(), key=lambda kv: -kv[1]))


def cpu_by_role(before: dict[int, Proc], after: dict[int, Proc], streams: int) -> dict[str, float]:
    """Milliseconds of CPU per stream by role, between two snapshots."""
    spent = {pid: (p.cpu - (before[pid].cpu if pid in before else 0.0)) * 1000 / streams for pid, p in after.items()}
    return by_role(after, spent)


# --- what the bench runs


@contextmanager
def running(command: list[str], ready: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server, from when `ready` answers until the block ends. Its stderr goes to a log whose tail
    says why, should it not come up."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_ready(ready, proc, log)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: IO[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    log.seek(0)
    tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"{url} did not come up ({'exited' if proc.poll() is not None else 'timed out'}): {tail}")


@contextmanager
def troupe(door: str, upstream: str, extra: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """troupe serving on one door: (its completions URL, the pid its processes descend from). `extra`:
    more of its environment (a database of the caller's, say)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="troupe-bench-", ignore_cleanup_errors=True) as data:
        env = {
            **os.environ,
            **TROUPE_ENV,
            "OPENAI_BASE_URL": upstream + "/v1",
            "TROUPE_DATA_DIR": data,
            **(extra or {}),
        }
        command = [PY, "-m", "troupe.cli", "serve", "--door", door, "--port", str(port), "--insecure"]
        with running(command, f"http://127.0.0.1:{port}/health", env) as proc:
            yield f"http://127.0.0.1:{port}{COMPLETIONS}", proc.pid


def floor(name: str, upstream: str, requests: int, results: dict[str, Passes], *flags: str) -> None:
    port = free_port()
    with running([PY, PASSTHROUGH, upstream + "/v1", str(port), *flags], f"http://127.0.0.1:{port}/docs"):
        results[name] = measure(f"http://127.0.0.1:{port}{COMPLETIONS}", requests)
    report(name, results)


def litellm(upstream: str, requests: int, results: dict[str, Passes]) -> None:
    version = litellm_floor.install()
    print(f"LiteLLM {version}, from {litellm_floor.VENV.relative_to(ROOT)}", flush=True)
    port = free_port()
    command, env = litellm_floor.command(upstream + "/v1", port)
    with running(command, f"http://127.0.0.1:{port}/health/liveliness", env):
        results[LITELLM] = measure(f"http://127.0.0.1:{port}{COMPLETIONS}", requests)
    report(LITELLM, results)


def phase(name: str, upstream: str, requests: int, results: dict[str, Passes]) -> None:
    if name == "litellm":
        litellm(upstream, requests, results)
    elif name == "serve-defaults":
        floor(SERVE_DEFAULTS, upstream, requests, results, "--serve", "--serve-defaults")
    else:  # a door, right after its floor
        floor(FLOORS[name], upstream, requests, results, *(["--serve"] if name == "serve" else []))
        with troupe(name, upstream) as (url, _):
            results[DOORS[name]] = measure(url, requests, settle=5.0, anonymous=True)
        report(DOORS[name], results)


# --- what it prints


def report(name: str, results: dict[str, Passes]) -> None:
    base = results[UPSTREAM]
    for label, f in results[name].items():
        b = base["c=1" if label == "c=1" else "c=16"]
        print(f"{name:30} {label:9}  ttft p50 {f['ttft_p50']:6.1f} ms ({f['ttft_p50'] - b['ttft_p50']:+6.1f})  "
              f"p99 {f['ttft_p99']:6.1f} ms ({f['ttft_p99'] - b['ttft_p99']:+7.1f})  "
              f"total p50 {f['total_p50']:6.1f} ms  {f['rate']:6.1f} streams/s ({f['rate'] / b['rate']:.2f}x)",
              flush=True)  # fmt: skip
    if name in DOORS.values():
        for label in ("c=16", "c=16 anon"):
            spent = {k[4:]: v for k, v in results[name][label].items() if k.startswith("cpu ") and v >= 0.05}
            print(f"{'':30} {label:9}  CPU ms per stream: " + ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
                  + f"; troupe's total {troupe_cpu(results[name][label]):.1f}", flush=True)  # fmt: skip


def troupe_cpu(figures: Figures) -> float:
    return sum(figures.get(f"cpu {r}", 0.0) for r in TROUPE_ROLES)


def goals(results: dict[str, Passes]) -> None:
    print("\ngoals (issue 14): TTFT added over the door's floor, streams/s as a share of it", flush=True)
    for door, name in DOORS.items():
        if name not in results or FLOORS[door] not in results:
            continue
        figures, floor_name = results[name], FLOORS[door]
        print(f"{name} vs {floor_name}")
        for label in ("c=16", "c=16 anon"):
            print(f"  {label:9}  " + versus_floor(figures[label], results[floor_name]["c=16"], GOALS[door]))
        if door == "uvicorn":
            added = figures["c=1"]["ttft_p50"] - results[UPSTREAM]["c=1"]["ttft_p50"]
            over_floor = figures["c=1"]["ttft_p50"] - results[floor_name]["c=1"]["ttft_p50"]
            print(f"  c=1        TTFT p50 {added:+.1f} ms over upstream (<= +{ONE_CALLER_MS:g}) "
                  f"{mark(added <= ONE_CALLER_MS)}   ({over_floor:+.1f} ms over the pass-through)")  # fmt: skip
        for label in ("c=16", "c=16 anon") if LITELLM in results else ():
            print(f"  {label:9}  vs LiteLLM " + versus_litellm(figures[label], results[LITELLM]["c=16"]))


def versus_floor(f: Figures, floor: Figures, goal: tuple[float, float, float]) -> str:
    p50, p99, share = f["ttft_p50"] - floor["ttft_p50"], f["ttft_p99"] - floor["ttft_p99"], f["rate"] / floor["rate"]
    return (f"p50 {p50:+7.1f} ms (<= +{goal[0]:g}) {mark(p50 <= goal[0])}   "
            f"p99 {p99:+7.1f} ms (<= +{goal[1]:g}) {mark(p99 <= goal[1])}   "
            f"{share:.2f}x streams/s (>= {goal[2]:g}x) {mark(share >= goal[2])}   "
            f"CPU {troupe_cpu(f):.1f} ms/stream (<= {CPU_MS:g}) {mark(troupe_cpu(f) <= CPU_MS)}")  # fmt: skip


def versus_litellm(f: Figures, lite: Figures) -> str:
    share, p50, p99 = f["rate"] / lite["rate"], f["ttft_p50"], f["ttft_p99"]
    return (f"{share:.2f}x its streams/s (>= {LITELLM_RATIO:g}x) {mark(share >= LITELLM_RATIO)}   "
            f"p50 {p50:.1f} vs {lite['ttft_p50']:.1f} ms {mark(p50 < lite['ttft_p50'])}   "
            f"p99 {p99:.1f} vs {lite['ttft_p99']:.1f} ms {mark(p99 < lite['ttft_p99'])}")  # fmt: skip


# --- the memory soak


async def soak_load(url: str, root: int, minutes: int, identified: bool) -> list[float]:
    """16 streams without pause for `minutes`; troupe's RSS (MiB) at the end of each minute."""
    began = time.monotonic()
    deadline, streams, failures = began + minutes * 60, 0, []
    samples: list[float] = []
    async with client(16) as http:

        async def worker(w: int) -> None:
            nonlocal streams
            while time.monotonic() < deadline:
                try:
                    await one(http, url, f"bench-{w}" if identified else None)
                    streams += 1
                except Failed as failure:
                    failures.append(str(failure))
                    await asyncio.sleep(1)

        workers = asyncio.gather(*(worker(w) for w in range(16)))
        for minute in range(1, minutes + 1):
            await asyncio.sleep(max(0.0, began + minute * 60 - time.monotonic()))
            procs = descendants(snapshot(), root)
            samples.append(sum(p.rss for p in procs.values()))
            roles = ", ".join(
                f"{k} {v:.0f}" for k, v in by_role(procs, {pid: p.rss for pid, p in procs.items()}).items()
            )
            print(f"minute {minute:3}  RSS {samples[-1]:8.1f} MiB ({roles})  {streams} streams, "
                  f"{len(failures)} failed", flush=True)  # fmt: skip
        await workers
    if failures:
        print(f"first failure: {failures[0]}")
    return samples


def soak(door: str, upstream: str, minutes: int, identified: bool) -> None:
    callers = "identified" if identified else "anonymous"
    print(f"soak: 16 {callers} streams on troupe's {door} door for {minutes} min, RSS of troupe's processes")
    with troupe(door, upstream) as (url, root):
        samples = asyncio.run(soak_load(url, root, minutes, identified))
    if len(samples) < 2:
        return
    change = (samples[-1] - samples[0]) / samples[0] * 100
    slope = statistics.linear_regression(range(1, len(samples) + 1), samples).slope
    rise = slope * (len(samples) - 1) / samples[0] * 100  # the trend line's rise over the run
    print(f"RSS minute 1 -> {len(samples)}: {change:+.2f}% (<= {RSS_PCT:g}%) {mark(abs(change) <= RSS_PCT)}   "
          f"slope {slope:+.2f} MiB/min, a {rise:+.2f}% trend (<= {RSS_PCT:g}%) {mark(rise <= RSS_PCT)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=96, help="streams per pass at c=16 (c=1: a quarter)")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=PHASES, help="phases to run (upstream always)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (and its first-use install)")
    parser.add_argument("--soak-minutes", type=int, default=0, help="run only the memory soak, this long")
    parser.add_argument("--door", choices=("uvicorn", "serve"), default="uvicorn", help="the soak's door")
    parser.add_argument("--soak-anonymous", action="store_true", help="the soak's callers are anonymous")
    args = parser.parse_args()
    began, load_average = time.monotonic(), f"{os.getloadavg()[0]:.1f}"
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    fake = [PY, "-m", "troupe.testing.fake_openai", "--port", str(port), "--ttft-ms", "50", "--tokens", "20"]
    with running(fake, upstream + "/docs"):
        if args.soak_minutes:
            soak(args.door, upstream, args.soak_minutes, not args.soak_anonymous)
        else:
            results = {UPSTREAM: measure(upstream + COMPLETIONS, args.requests)}
            report(UPSTREAM, results)
            for name in PHASES:
                if name not in args.only or (name == "litellm" and args.no_litellm):
                    continue
                try:
                    phase(name, upstream, args.requests, results)
                except (RuntimeError, OSError) as error:  # the rest of the run goes on
                    print(f"{name}: not measured: {error}", flush=True)
            goals(results)
    print(f"\ntook {time.monotonic() - began:.0f} s; load average {load_average} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end (2 cores: others' work skews the figures)")  # fmt: skip


if __name__ == "__main__":
    main()

"""The door's cost: streaming clients at concurrency 1 and 16 against an upstream with a fixed time to
first token (50 ms, 20 tokens), directly, through do-nothing pass-throughs (uvicorn, Ray Serve), and
through troupe (uvicorn door, Ray Serve door). Prints added ms (p50, p99) and streams/s vs upstream,
and for troupe at concurrency 16 the CPU each stream cost, by process role (door, session actors,
orchestrator, upstream, client), which says what dominates on a CPU-bound machine.

Run: .venv/bin/python bench/door_bench.py [--requests 96]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from troupe.testing.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BODY = {"model": "tony", "stream": True, "messages": [{"role": "user", "content": "Give me a status update."}]}


def wait_ready(url: str, path: str = "/health", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


async def one(client: httpx.AsyncClient, url: str, caller: str) -> tuple[float, float]:
    began = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=BODY, headers={"X-Request-ID": caller}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
    end = time.perf_counter()
    return (first or end) - began, end - began


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by each process on this machine, keyed by pid, with its role."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        seen[f"{pid} {role(name, command)}"] = (int(fields[11]) + int(fields[12])) / tick
    return seen


def role(name: str, command: str) -> str:
    for key, label in (("ServeRepli", "door (Serve replica)"), ("troupe.cli", "door (troupe process)"),
                       ("SessionAct", "session actors"), ("Orchestrat", "orchestrator"), ("ray::", "other actors"),
                       ("fake_openai", "upstream"), ("door_bench", "client"), ("raylet", "ray system"),
                       ("gcs_server", "ray system")):  # fmt: skip
        if key in name or key in command:
            return label
    return "other"


def cpu_by_role(before: dict[str, float], after: dict[str, float], streams: int) -> dict[str, float]:
    """Milliseconds of CPU per stream by role, between two cpu_seconds() readings."""
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        label = key.split(" ", 1)[1]
        spent[label] = spent.get(label, 0.0) + (seconds - before.get(key, 0.0)) * 1000 / streams
    return dict(sorted(spent.items(), key=lambda kv: -kv[1]))


async def load(url: str, concurrency: int, requests: int, settle: float = 0.0) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        # warm-up: every worker's session exists and connections are open; then the warm pool refills
        await asyncio.gather(*(one(client, url, f"bench-{w}") for w in range(concurrency)))
        await asyncio.sleep(settle)
        cpu_before = cpu_seconds()
        results: list[tuple[float, float]] = []

        async def worker(w: int) -> None:
            for _ in range(requests // concurrency):
                results.append(await one(client, url, f"bench-{w}"))

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - began
    ttft = sorted(r[0] for r in results)
    total = sorted(r[1] for r in results)
    return {
        **{f"cpu {k}": v for k, v in cpu_by_role(cpu_before, cpu_seconds(), len(results)).items()},
        "ttft_p50": statistics.median(ttft) * 1000,
        "ttft_p99": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))] * 1000,
        "total_p50": statistics.median(total) * 1000,
        "rate": len(results) / wall,
    }


def report(name: str, figures: dict[int, dict[str, float]], base: dict[int, dict[str, float]]) -> None:
    for c, f in figures.items():
        b = base[c]
        print(f"{name:28} c={c:<2}  ttft p50 {f['ttft_p50']:6.1f} ms (+{f['ttft_p50'] - b['ttft_p50']:5.1f})  "
              f"p99 {f['ttft_p99']:6.1f} ms (+{f['ttft_p99'] - b['ttft_p99']:5.1f})  "
              f"total p50 {f['total_p50']:6.1f} ms  {f['rate']:6.1f} streams/s ({f['rate'] / b['rate']:.2f}x)",
              flush=True)  # fmt: skip
    if "troupe" in name and 16 in figures:
        spent = {k[4:]: v for k, v in figures[16].items() if k.startswith("cpu ") and v >= 0.05}
        print(f"{'':28} c=16  CPU ms per stream: " + ", ".join(f"{k} {v:.1f}" for k, v in spent.items()), flush=True)


def measure(url: str, requests: int, settle: float = 0.0) -> dict[int, dict[str, float]]:
    return {c: asyncio.run(load(url, c, requests if c > 1 else max(20, requests // 4), settle)) for c in (1, 16)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=96)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = free_port()
        procs.append(subprocess.Popen([PY, "-m", "troupe.testing.fake_openai", "--port", str(up), "--ttft-ms", "50",
                                       "--tokens", "20"]))  # fmt: skip
        upstream = f"http://127.0.0.1:{up}"
        wait_ready(upstream, "/docs")
        base = measure(upstream + "/v1/chat/completions", args.requests)
        report("upstream (direct)", base, base)

        pt = free_port()
        procs.append(subprocess.Popen([PY, str(ROOT / "bench" / "passthrough.py"), upstream + "/v1", str(pt)]))
        wait_ready(f"http://127.0.0.1:{pt}", "/docs")
        report("pass-through, uvicorn", measure(f"http://127.0.0.1:{pt}/v1/chat/completions", args.requests), base)
        procs.pop().terminate()

        for door in ("uvicorn", "serve"):
            tp = free_port()
            env = {**os.environ, "OPENAI_BASE_URL": upstream + "/v1", "OPENAI_API_KEY": "bench",
                   "TROUPE_MODEL": "gpt-4o-mini", "TROUPE_RATE_LIMIT_PER_MINUTE": "0",
                   "TROUPE_SESSION_POOL_SIZE": "4", "TROUPE_LIFE_LOOPS_ENABLED": "false",
                   "TROUPE_DATA_DIR": tempfile.mkdtemp(prefix="troupe-bench-")}  # fmt: skip
            command = [PY, "-m", "troupe.cli", "serve", "--door", door, "--port", str(tp), "--insecure"]
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{tp}")
            figures = measure(f"http://127.0.0.1:{tp}/v1/chat/completions", args.requests, settle=5.0)
            report(f"troupe, {door} door", figures, base)
            proc.terminate()
            proc.wait(60)
            procs.pop()

        serve_passthrough(upstream, base, args.requests)
    finally:
        for proc in procs:
            proc.terminate()


def serve_passthrough(upstream: str, base: dict[int, dict[str, float]], requests: int) -> None:
    import ray
    from ray import serve

    sys.path.insert(0, str(ROOT / "bench"))
    from passthrough import build

    ray.init(include_dashboard=False, log_to_driver=False)
    sp = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": sp})

    def builder() -> object:  # built on the replica: an HTTP client does not pickle
        return build(upstream + "/v1")

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @serve.ingress(builder)
    class Relay:
        pass

    serve.run(Relay.bind(), route_prefix="/")
    wait_ready(f"http://127.0.0.1:{sp}", "/docs")
    report("pass-through, Ray Serve", measure(f"http://127.0.0.1:{sp}/v1/chat/completions", requests), base)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Sessions under real traffic, through the uvicorn door with the openai SDK (fake model, SQLite):

  anonymous   1,000 requests with no caller identity, one at a time and then 16 at a time: errors, the
              most session actors alive at once, and troupe's total RSS after warm-up and at the end
  callers     150 identified callers holding conversations at once (interleaved turns): errors, RSS and
              USS per session actor, sessions live at the end
  ttft        16 identified callers at 16 streams, not pre-warmed: time to first token p50 and p99
  chaos       every session actor killed every 5 s under 8 concurrent streams for 30 s: streams failed
              meanwhile and afterwards, and whether every reply a caller received is in the store
  orchestrator  the orchestrator killed (SIGKILL) under load: seconds until callers are served again
  soak        8 streams from 16 identified callers for N minutes: RSS each minute

Run: .venv/bin/python bench/sessions_bench.py [anonymous callers ttft chaos orchestrator] [--soak 10]
Prints medians and counts of one run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import openai
import psutil
import ray

from troupe.actors.orchestrator import ORCHESTRATOR_NAME
from troupe.app import Gateway, create_app
from troupe.config.settings import Settings
from troupe.control_panel.request_ids import IMPORT_PATH
from troupe.runtime import Runtime
from troupe.store import Store
from troupe.testing.loopback import serving


def own_ray_processes() -> list[psutil.Process]:
    """The Ray workers of the cluster this process started (its descendants: the raylet is its child),
    not those of any other Ray on the machine."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ray::" in cmd or "default_worker.py" in cmd:
            found.append(proc)
    return found


def troupe_rss_mb() -> float:
    """This process and every Ray worker of its own cluster (troupe's actors), in MiB."""
    total = psutil.Process().memory_info().rss
    for proc in own_ray_processes():
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def session_actor_processes() -> list[psutil.Process]:
    found = []
    for proc in own_ray_processes():
        try:
            if "SessionActor" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


async def ask(client: openai.AsyncOpenAI, messages: list[dict[str, str]], caller: str | None) -> tuple[str, float]:
    """One streamed completion; returns (text, seconds to first token). `caller` None: no identity."""
    headers = {"X-Request-ID": caller} if caller else {}
    began = time.perf_counter()
    stream = await client.chat.completions.create(model="tony", messages=messages, stream=True, extra_headers=headers)
    first, parts = 0.0, []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not parts:
                first = time.perf_counter() - began
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts), first


async def actors_settle(quiet_s: float = 6.0, within_s: float = 90.0) -> float:
    """Wait until the number of session actors has not changed for `quiet_s`; returns the seconds taken."""
    began = time.perf_counter()
    count, since = len(session_actor_processes()), time.perf_counter()
    while time.perf_counter() - since < quiet_s and time.perf_counter() - began < within_s:
        await asyncio.sleep(1)
        now = len(session_actor_processes())
        if now != count:
            count, since = now, time.perf_counter()
    return time.perf_counter() - began


def ray_cpu_seconds() -> float:
    total = 0.0
    for proc in own_ray_processes():
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def cpu_quiet(share: float = 0.5, quiet_s: float = 3.0, within_s: float = 90.0) -> float:
    """Wait until troupe's Ray processes have used under `share` of a core each second for `quiet_s` in a
    row: the actors of a start-up or a refill have started (one starting uses a whole core; an idle
    troupe, its heartbeats and housekeeping, a little), as a deployed service's have between bursts.
    Returns the seconds taken."""
    began = time.perf_counter()
    quiet_since = began
    used = ray_cpu_seconds()
    while time.perf_counter() - began < within_s:
        await asyncio.sleep(1.0)
        now = ray_cpu_seconds()
        if now - used > share:
            quiet_since = time.perf_counter()
        elif time.perf_counter() - quiet_since >= quiet_s:
            break
        used = now
    return time.perf_counter() - began


async def anonymous(client: openai.AsyncOpenAI, settings: Settings) -> None:
    errors, most = 0, 0
    history = [{"role": "user", "content": "Hello Tony, quick question."}]
    for _ in range(20):  # warm-up, in both of the patterns measured
        await ask(client, history, None)
    for _ in range(4):
        await asyncio.gather(*(ask(client, history, None) for _ in range(16)))
    # warm: the pool has grown to what the 16-at-once pattern wants (it starts one actor at a time)
    settled = await actors_settle()
    warm = troupe_rss_mb()

    async def one(i: int) -> None:
        nonlocal errors, most
        try:
            await ask(client, [*history, {"role": "user", "content": f"question {i}"}], None)
        except Exception:
            errors += 1
        if i % 25 == 0:
            most = max(most, len(session_actor_processes()))

    began = time.perf_counter()
    for i in range(500):
        await one(i)
    sequential = time.perf_counter() - began
    began = time.perf_counter()
    for start in range(500, 1000, 16):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 16, 1000))))
    concurrent = time.perf_counter() - began
    await asyncio.sleep(3)
    end = troupe_rss_mb()
    print(
        f"anonymous: 1000 requests, {errors} errors; 500 one at a time in {sequential:.1f} s, 500 at 16 at a time "
        f"in {concurrent:.1f} s; at most {most} session actors (cap {settings.max_sessions}); troupe RSS "
        f"{warm:.0f} MiB after warm-up ({settled:.0f} s for the pool to settle), {end:.0f} MiB at the end "
        f"({(end - warm) / warm * 100:+.1f}%)",
        flush=True,
    )


async def callers(client: openai.AsyncOpenAI, runtime: Runtime, count: int = 150) -> None:
    errors = 0
    histories: dict[str, list[dict[str, str]]] = {f"bench-caller-{i}": [] for i in range(count)}

    async def turn(caller: str, n: int) -> None:
        nonlocal errors
        history = histories[caller]
        history.append({"role": "user", "content": f"turn {n} from {caller}"})
        try:
            text, _ = await ask(client, history, caller)
            history.append({"role": "assistant", "content": text})
        except Exception:
            errors += 1

    names = list(histories)
    for n in range(3):  # interleaved: every caller's turn n before anyone's turn n+1, 16 at a time
        for start in range(0, count, 16):
            await asyncio.gather(*(turn(c, n) for c in names[start : start + 16]))
    procs = session_actor_processes()
    rss = [p.memory_info().rss / 2**20 for p in procs]
    uss = [p.memory_full_info().uss / 2**20 for p in procs]
    live = len(await runtime.orchestrator.list_sessions.remote())
    print(
        f"callers: {count} identified callers x 3 interleaved turns, {errors} errors; {len(procs)} session actors "
        f"(cap {runtime.settings.max_sessions}), RSS {statistics.median(rss):.0f} MiB and USS "
        f"{statistics.median(uss):.0f} MiB each (median); {live} sessions live at the end",
        flush=True,
    )


async def pool_full(runtime: Runtime, pool: int) -> float:
    """Seconds until the warm pool holds `pool` free actors."""
    began = time.perf_counter()
    while (await runtime.orchestrator.status.remote()).pool_size < pool:  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.2)
    return time.perf_counter() - began


async def ttft(client: openai.AsyncOpenAI, runtime: Runtime, pool: int) -> None:
    """16 new callers, six turns each, 16 streams at once: first all arriving in the same instant (the
    worst case: 16 sessions opened at once on 2 cores), then, once the pool has refilled, 16 others
    arriving over one second. Before each, troupe's processes are left to go quiet (an actor starting is
    a core-second of a 2-core machine), as a deployed service's are between bursts."""
    print(f"(troupe's processes were quiet {await cpu_quiet():.1f} s later)", flush=True)
    await ttft_group(client, "arriving at once", 0.0, "ttft-burst")
    print(f"(the pool was full again {await pool_full(runtime, pool):.1f} s after that burst, and troupe's "
          f"processes quiet {await cpu_quiet():.1f} s after that)", flush=True)  # fmt: skip
    await ttft_group(client, "arriving over 1 s", 1.0, "ttft-spread")


async def ttft_group(client: openai.AsyncOpenAI, label: str, spread_s: float, prefix: str) -> None:
    firsts: list[float] = []
    opening: list[float] = []  # each caller's first turn (its session is opened on it)

    async def caller(i: int) -> None:
        await asyncio.sleep(spread_s * i / 16)
        history = [{"role": "user", "content": "hello"}]
        for n in range(6):
            text, first = await ask(client, history, f"{prefix}-{i}")
            firsts.append(first)
            if n == 0:
                opening.append(first)
            history += [{"role": "assistant", "content": text}, {"role": "user", "content": f"and {n}?"}]

    await asyncio.gather(*(caller(i) for i in range(16)))
    firsts.sort()
    p50, p99 = statistics.median(firsts), firsts[int(len(firsts) * 0.99) - 1]
    print(
        f"ttft: 16 callers {label}, not pre-warmed, 16 streams, {len(firsts)} turns: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (p99 - p50 = {(p99 - p50) * 1000:.1f} ms; fake model, no model time); "
        f"first turns: median {statistics.median(opening) * 1000:.1f} ms, slowest {max(opening) * 1000:.1f} ms",
        flush=True,
    )


async def chaos(client: openai.AsyncOpenAI, runtime: Runtime, seconds: float = 30.0) -> None:
    stop = time.monotonic() + seconds
    counts = {"during_ok": 0, "during_failed": 0, "after_ok": 0, "after_failed": 0}
    heard: list[tuple[str, str]] = []

    async def stream(i: int, phase: str, until: float) -> None:
        history: list[dict[str, str]] = []
        n = 0
        while time.monotonic() < until:
            history.append({"role": "user", "content": f"chaos {i}.{n}"})
            n += 1
            try:
                text, _ = await ask(client, history, f"chaos-caller-{i}")
                history.append({"role": "assistant", "content": text})
                heard.append((f"req-chaos-caller-{i}", text))
                counts[f"{phase}_ok"] += 1
            except Exception:
                history.pop()
                counts[f"{phase}_failed"] += 1

    async def killer() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(5)
            for proc in session_actor_processes():
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass

    await asyncio.gather(killer(), *(stream(i, "during", stop) for i in range(8)))
    await asyncio.sleep(3)
    await asyncio.gather(*(stream(i, "after", time.monotonic() + 10) for i in range(8)))
    store = await Store.open(runtime.settings.resolved_database_url, migrate=False)
    try:
        kept = 0
        sessions = [s for s in await store.list_sessions(status=None) if s.caller_id.startswith("req-chaos")]
        stored = {s.caller_id: [] for s in sessions}  # type: dict[str, list[str]]
        for s in sessions:
            stored[s.caller_id] += [m.content or "" for m in await store.load_messages(s.id) if m.role == "assistant"]
        kept = sum(1 for caller, text in heard if text in stored.get(caller, []))
    finally:
        await store.close()
    during = counts["during_ok"] + counts["during_failed"]
    after = counts["after_ok"] + counts["after_failed"]
    print(
        f"chaos: every session actor killed every 5 s, 8 streams for {seconds:.0f} s: {counts['during_failed']} of "
        f"{during} streams failed ({counts['during_failed'] / max(1, during) * 100:.1f}%); afterwards "
        f"{counts['after_failed']} of {after}; {kept} of {len(heard)} replies received are in the store",
        flush=True,
    )


async def orchestrator_kill(client: openai.AsyncOpenAI, runtime: Runtime) -> None:
    """SIGKILL the orchestrator under 8 streams: when a new caller is served again, and when the 8 callers
    whose turns were in flight have all been answered (or failed)."""
    handle = ray.get_actor(ORCHESTRATOR_NAME, namespace=runtime.settings.namespace)
    pid = next(
        (p.pid for p in psutil.process_iter(["cmdline"]) if "Orchestrator" in " ".join(p.info["cmdline"] or [])), None
    )
    load = asyncio.ensure_future(asyncio.gather(*(ask(client, [{"role": "user", "content": "hi"}], f"o-{i}")
                                                  for i in range(8)), return_exceptions=True))  # fmt: skip
    await asyncio.sleep(0.2)
    if pid:
        os.kill(pid, signal.SIGKILL)
    else:
        ray.kill(handle, no_restart=False)
    killed = time.perf_counter()

    async def new_caller() -> float:
        while time.perf_counter() - killed < 120:
            try:
                await ask(client, [{"role": "user", "content": "back?"}], "after-kill")
                return time.perf_counter() - killed
            except Exception:
                await asyncio.sleep(0.2)
        return float("inf")

    async def in_flight() -> tuple[float, int]:
        results = await load
        return time.perf_counter() - killed, sum(1 for r in results if isinstance(r, BaseException))

    async def answering() -> float:
        """When the restarted orchestrator process first answers a call (before its start-up is done)."""
        while time.perf_counter() - killed < 120:
            try:
                await asyncio.wait_for(handle.ping.remote(), 1.0)
                return time.perf_counter() - killed
            except Exception:
                await asyncio.sleep(0.1)
        return float("inf")

    answered, back, (settled, failed_streams) = await asyncio.gather(answering(), new_caller(), in_flight())
    failed = [p for p in await handle.list_processes.remote() if "orchestrator restarted" in (p.error or "")]
    phases = (await handle.status.remote()).startup_s
    print(
        f"orchestrator: SIGKILL under 8 streams; its new process answered {answered:.1f} s later; a new caller "
        f"was served {back:.1f} s later; the 8 callers in "
        f"flight were all answered or failed by {settled:.1f} s ({failed_streams} failed); the rebuilt registry "
        f"marks {len(failed)} processes lost with it; its recovery: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()),
        flush=True,
    )


async def soak(client: openai.AsyncOpenAI, minutes: float) -> None:
    until = time.monotonic() + minutes * 60
    samples: list[float] = []

    async def stream(i: int) -> None:
        history: list[dict[str, str]] = []
        n = 0
        while time.monotonic() < until:
            caller = f"soak-caller-{(i + n) % 16}"
            history = [*history[-6:], {"role": "user", "content": f"soak {n}"}]
            n += 1
            try:
                await ask(client, history, caller)
            except Exception:
                pass

    async def sampler() -> None:
        while time.monotonic() < until:
            samples.append(troupe_rss_mb())
            await asyncio.sleep(60)

    await asyncio.gather(sampler(), *(stream(i) for i in range(8)))
    one = samples[1] if len(samples) > 1 else samples[0]
    print(
        "soak: RSS by minute "
        + ", ".join(f"{s:.0f}" for s in samples)
        + f" MiB; minute 1 to the end {(samples[-1] - one) / one * 100:+.1f}%",
        flush=True,
    )


async def main_async(which: list[str], soak_minutes: float, pool: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", IMPORT_PATH)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench-sessions")
        settings = Settings(
            data_dir=Path(tmp), model_backend="fake", life_loops_enabled=False, namespace="bench-sessions",
            rate_limit_per_minute=0, max_sessions=32, session_pool_size=pool, insecure=True,
        )  # fmt: skip
        runtime = Runtime.start(settings)
        try:
            # troupe has been up a moment, as a deployed service has: its warm pool is full (the callers
            # are not pre-warmed: none of them has a session)
            print(f"(warm pool of {pool} full {await pool_full(runtime, pool):.1f} s after start)", flush=True)
            app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
            with serving(app) as url:
                client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
                for name in which:
                    if name == "anonymous":
                        await anonymous(client, settings)
                    elif name == "callers":
                        await callers(client, runtime)
                    elif name == "ttft":
                        await ttft(client, runtime, pool)
                    elif name == "chaos":
                        await chaos(client, runtime)
                    elif name == "orchestrator":
                        await orchestrator_kill(client, runtime)
                if soak_minutes:
                    await soak(client, soak_minutes)
        finally:
            runtime.stop()
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", nargs="*", default=["anonymous", "callers", "ttft", "chaos", "orchestrator"])
    parser.add_argument("--soak", type=float, default=0.0, help="minutes of soak (0: none)")
    parser.add_argument("--pool", type=int, default=2, help="TROUPE_SESSION_POOL_SIZE")
    args = parser.parse_args()
    print(f"(TROUPE_SESSION_POOL_SIZE={args.pool}, TROUPE_MAX_SESSIONS=32)", flush=True)
    asyncio.run(main_async(args.which, args.soak, args.pool))


if __name__ == "__main__":
    main()

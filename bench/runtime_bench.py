"""Runtime-core figures: Ray start-up, a new caller's first turn (warm pool vs cold actor), the actor
hop per turn, resident memory per session actor, and how many sessions fit in this machine's memory.

Run: .venv/bin/python bench/runtime_bench.py [--turns 50] [--sessions 8]
Uses the fake model (no model time), SQLite in a temporary directory. Prints medians of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import ray

from troupe.actors.agent import AgentLoop
from troupe.clients.fake_model import ScriptedChatModel
from troupe.config.settings import Settings
from troupe.core.chat import ChatMessage
from troupe.core.messages import TurnRequest
from troupe.core.persona_file import load_personas
from troupe.runtime import Runtime, init_ray


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def first_turn(runtime: Runtime, caller: str) -> float:
    client = runtime.client()
    request = TurnRequest(caller_id=caller, persona="Tony", messages=(ChatMessage(role="user", content="hi"),))
    began = time.perf_counter()
    async for event in client.turn(request):
        if event.kind == "delta":
            break
    elapsed = time.perf_counter() - began
    async for _ in client.turn(request.model_copy(update={"messages": (ChatMessage(role="user", content="x"),)})):
        pass
    return elapsed


async def turn_latency(runtime: Runtime, turns: int) -> list[float]:
    client = runtime.client()
    out = []
    for i in range(turns):
        request = TurnRequest(
            caller_id="+15550001000",
            persona="Tony",
            messages=(ChatMessage(role="user", content=f"turn {i}"),),
        )
        began = time.perf_counter()
        async for _ in client.turn(request):
            pass
        out.append(time.perf_counter() - began)
    return out


async def in_process_latency(turns: int) -> list[float]:
    catalog = load_personas()
    tony = catalog.get("Tony")
    out = []
    for i in range(turns):
        loop = AgentLoop(speaker="Tony", model=ScriptedChatModel(), model_name="fake")
        began = time.perf_counter()
        async for _ in loop.run(
            (
                ChatMessage(role="system", content=tony.layers[0].text),
                ChatMessage(role="user", content=f"turn {i}"),
            )
        ):
            pass
        out.append(time.perf_counter() - began)
    return out


def session_rss_mb() -> list[float]:
    rss = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ray::SessionActor" in cmd:
            rss.append(proc.memory_info().rss / 2**20)
    return rss


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="troupe-bench-"))
    base = dict(data_dir=tmp, model_backend="fake", life_loops_enabled=False, session_pool_size=0)

    began = time.perf_counter()
    init_ray(Settings(**base))
    print(f"ray start-up:                     {ms(time.perf_counter() - began)}")

    warm_settings = Settings(**{**base, "session_pool_size": 4, "namespace": "bench-warm"})
    began = time.perf_counter()
    warm = Runtime.start(warm_settings)
    print(f"troupe start-up (all actors):     {ms(time.perf_counter() - began)}")
    await asyncio.sleep(2)
    warm_firsts = [await first_turn(warm, f"+1555000{i:04d}") for i in range(4)]
    hop = await turn_latency(warm, args.turns)
    local = await in_process_latency(args.turns)

    cold = Runtime.start(Settings(**{**base, "namespace": "bench-cold"}))
    cold_firsts = [await first_turn(cold, f"+1555100{i:04d}") for i in range(4)]
    print(f"first turn, warm pool (median):   {ms(statistics.median(warm_firsts))}")
    print(
        f"first turn, cold actor (median):  {ms(statistics.median(cold_firsts))}"
        f"  ({statistics.median(cold_firsts) / statistics.median(warm_firsts):.1f}x the warm pool)"
    )
    print(f"turn through session actor (p50): {ms(statistics.median(hop))}")
    print(f"same turn in-process (p50):       {ms(statistics.median(local))}")
    print(f"actor hop + store + accounting:   {ms(statistics.median(hop) - statistics.median(local))} per turn")
    cold.stop()

    for i in range(args.sessions):
        await first_turn(warm, f"+1555200{i:04d}")
    rss = session_rss_mb()
    per = statistics.median(rss) if rss else float("nan")
    total = psutil.virtual_memory().total / 2**20
    print(f"session actors alive:             {len(rss)}")
    print(f"RSS per session actor (median):   {per:.0f} MB")
    print(f"sessions in {total / 1024:.0f} GiB (80% of RAM): ~{int(total * 0.8 / per)}")
    warm.stop()
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    asyncio.run(main())

"""The offline model's figures: the engine's tokens/s for one caller and for 4 at once, time to first
token through troupe's door (the openai SDK on loopback), and the engine process's memory.

Run: .venv/bin/python bench/offline_model.py [--runs 5]
Uses the shipped Gemma 3 270M GGUF, 2 threads, SQLite in a temporary directory. Prints medians of one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai
import psutil
import ray

from troupe.actors.local_model import Engine, default_model_path
from troupe.actors.models import LOCAL_MODEL_ACTOR
from troupe.app import Gateway, create_app
from troupe.config.settings import Settings
from troupe.runtime import Runtime
from troupe.testing.loopback import serving

PROMPT = "The following is a long story about a robot who learns to paint.\n\nOnce upon a time,"
TOKENS = 128


def generate(engine: Engine, tokens: int) -> tuple[int, float]:
    """Raw engine speed: no stops, exactly `tokens` tokens. Returns (tokens, seconds)."""
    produced = 0

    def on_chunk(chunk: dict[str, Any]) -> bool:
        nonlocal produced
        if (chunk.get("choices") or [{}])[0].get("text"):
            produced += 1
        return False

    began = time.perf_counter()
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.7, "stream": True, "ignore_eos": True}
    engine.server.handle_completions(body, on_chunk)
    return produced, time.perf_counter() - began


def engine_rates(runs: int) -> None:
    engine = Engine(default_model_path(), n_ctx=2048, threads=2, slots=4)
    generate(engine, 8)  # warm
    single = [n / s for n, s in (generate(engine, TOKENS) for _ in range(runs))]
    print(f"engine, 1 caller:   {statistics.median(single):5.1f} tokens/s (median of {runs}, {TOKENS} tokens each)")
    aggregate = []
    for _ in range(runs):
        results: list[tuple[int, float]] = []

        def caller(out: list[tuple[int, float]] = results) -> None:
            out.append(generate(engine, TOKENS))

        threads = [threading.Thread(target=caller) for _ in range(4)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        aggregate.append(sum(n for n, _ in results) / (time.perf_counter() - began))
    med = statistics.median(aggregate)
    print(f"engine, 4 callers:  {med:5.1f} tokens/s in all, {med / 4:5.1f} each (median of {runs})")


def through_troupe(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench-offline")
        settings = Settings(
            data_dir=Path(tmp), model_backend="local", life_loops_enabled=False, namespace="bench", insecure=True
        )  # a loopback door with no key, as `troupe serve --insecure`
        runtime = Runtime.start(settings)
        try:
            app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
            with serving(app) as url:
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
                ttft: list[float] = []
                for i in range(runs + 1):
                    began = time.perf_counter()
                    stream = client.chat.completions.create(
                        model="tony", stream=True, max_tokens=40,
                        messages=[{"role": "user", "content": f"Hi Tony, question {i}: how is the platform?"}],
                        extra_headers={"X-Request-ID": f"bench-caller-{i % 2}"},
                    )  # fmt: skip
                    first = None
                    for chunk in stream:
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.perf_counter() - began
                    if i and first is not None:  # the first request warms the caller's session
                        ttft.append(first)
                print(
                    f"through troupe:     time to first token {statistics.median(ttft) * 1000:.0f} ms median "
                    f"(min {min(ttft) * 1000:.0f}, max {max(ttft) * 1000:.0f}; {len(ttft)} streamed turns, "
                    "uvicorn door)"
                )
            state = ray.get(ray.get_actor(LOCAL_MODEL_ACTOR, namespace="bench").state.remote())
            proc = psutil.Process(state.pid)
            uss = proc.memory_full_info().uss / 2**20
            print(f"engine process:     RSS {state.rss_mb:.0f} MB, USS {uss:.0f} MB (4 slots, 2048 tokens each)")
        finally:
            runtime.stop()
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    engine_rates(args.runs)
    through_troupe(args.runs)


if __name__ == "__main__":
    main()

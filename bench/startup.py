"""Cold start of `troupe serve` on its embedded defaults (SQLite, the offline model): seconds until
/health answers, until /ready says the model is loaded, and the phases `--verbose` prints.

Run: .venv/bin/python bench/startup.py [--runs 3]
Each run is a fresh data directory, a fresh Ray and a free port; prints the median and every run.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from troupe.testing.loopback import free_port


def wait_for(url: str, began: float, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in time")


def one_run() -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TROUPE_", "RAY_", "OPENAI_"))},
            "TROUPE_DATA_DIR": tmp,
            "TROUPE_NAMESPACE": f"bench-startup-{port}",
        }
        log = Path(tmp) / "console.txt"
        with log.open("w") as out:
            began = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "troupe.cli", "serve", "--port", str(port), "--verbose"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = began + 180
            health = wait_for(f"http://127.0.0.1:{port}/health", began, deadline)
            ready = wait_for(f"http://127.0.0.1:{port}/ready", began, deadline)
            phases = None
            for _ in range(100):
                phases = re.search(r"start-up: (.*)", log.read_text(errors="replace"))
                if phases:
                    break
                time.sleep(0.1)
            return health, ready, phases.group(1) if phases else "?"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        health, ready, phases = one_run()
        results.append((health, ready))
        print(f"run {i + 1}: /health {health:.1f} s, /ready {ready:.1f} s  ({phases})", flush=True)
    print(
        f"cold troupe serve: /health after {statistics.median(h for h, _ in results):.1f} s, "
        f"/ready after {statistics.median(r for _, r in results):.1f} s (median of {args.runs}; target 20 s)"
    )


if __name__ == "__main__":
    main()

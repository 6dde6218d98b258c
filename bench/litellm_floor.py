"""LiteLLM's proxy as a floor for door_bench: installed in a virtual environment of the bench's own
(never a troupe dependency) and run with one worker, pointed at the bench's fake upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".litellm-venv"
# versions reported as published compromised
REQUIREMENT = "litellm[proxy]!=1.82.7,!=1.82.8,!=1.107.0"
# nothing that would reach the internet: no cost map fetch, no telemetry, no database, no UI
OFFLINE = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "NO_PROXY": "127.0.0.1,localhost",
    # 1.108 refuses to start without a master key unless told this is local development
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}
CONFIG = """\
model_list:
  - model_name: tony
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {api_base}
      api_key: bench
litellm_settings:
  telemetry: false
  drop_params: true
"""


def install() -> str:
    """The LiteLLM version in the bench's venv, creating the venv first if it is missing. Raises
    RuntimeError with pip's last words when that fails."""
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "litellm").exists():
        print(f"installing {REQUIREMENT} into {VENV} (first use)", flush=True)
        steps = [[sys.executable, "-m", "venv", str(VENV)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT]]  # fmt: skip
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(step[:4])} failed: {(done.stderr or done.stdout).strip()[-400:]}")
    done = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"litellm does not import in {VENV}: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


def command(api_base: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The proxy's command line and environment: one worker on 127.0.0.1:port with no master key
    (like troupe's --insecure), serving `tony` from the upstream at api_base."""
    config = VENV / "bench-config.yaml"
    config.write_text(CONFIG.format(api_base=api_base))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    line = [str(VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]  # fmt: skip
    return line, {**env, **OFFLINE}

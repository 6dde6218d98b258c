"""The offline engine's diagnosis, without loading a model: why a file cannot be a model, and how a
probe that crashed is named."""

from __future__ import annotations

import sys
from pathlib import Path

from troupe.actors.local_model import check_model_file, probe
from troupe.cli import notable


def test_a_missing_or_foreign_file_is_named(tmp_path: Path) -> None:
    assert "no such file" in (check_model_file(tmp_path / "gone.gguf") or "")
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    assert check_model_file(text) == "notes.gguf is not a GGUF model file"
    real = tmp_path / "model.gguf"
    real.write_bytes(b"GGUF" + bytes(16))
    assert check_model_file(real) is None


def test_a_probe_killed_by_a_signal_names_it(tmp_path: Path) -> None:
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    reason = probe(tmp_path / "m.gguf", 1, command=crash) or ""
    assert "SIGILL" in reason and "cannot run it" in reason


def test_a_probe_that_fails_gives_its_last_words(tmp_path: Path) -> None:
    fail = [sys.executable, "-c", "import sys; print('llama.cpp could not load m.gguf', file=sys.stderr); sys.exit(1)"]
    assert probe(tmp_path / "m.gguf", 1, command=fail) == "llama.cpp could not load m.gguf"
    assert probe(tmp_path / "m.gguf", 1, command=[sys.executable, "-c", "pass"]) is None


def test_the_console_names_a_crash_in_one_line() -> None:
    died = {"type": "process.died", "agent": "Tony", "name": "tony-main", "reason": "restart 1 of 3 in 60s"}
    assert notable(died) == "tony-main died: its process exited; restart 1 of 3 in 60s"
    assert notable({"type": "process.started", "agent": "pool"}) is None

"""`troupe serve` as an operator runs it, off a terminal: every troupe process (the CLI, the door's Serve
replica, the orchestrator, the session actors) writes JSON lines of one schema, and no caller's phone
number or configured secret reaches any log file, troupe's or Ray's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import wait_until_up
from tests.integration.test_serve_door import troupe_serve
from troupe.core.logs import FIELDS
from troupe.testing.loopback import free_port

PHONE = "+14155550100"
PLATFORM_KEY = "platform-key-for-the-log-test-0123"
VAPI_SECRET = "vapi-secret-for-the-log-test-4242"


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A Ray temp dir of this test's own: its session logs are this run's alone, and a cluster someone
    started with `ray start` on this machine is not joined. Short: Ray's socket paths must fit 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="trl", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def json_lines(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(troupe's JSON lines, other lines) of a log file."""
    parsed, other = [], []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"process_kind"' in line:
            parsed.append(json.loads(line))  # every troupe line parses
        elif line.strip():
            other.append(line)
    return parsed, other


def ray_worker_lines(session_logs: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(session_logs.glob("worker-*")):
        parsed, other = json_lines(path)
        lines += parsed
        # Ray's own lines in a worker file are its job and actor headers; troupe's are all JSON
        stray = [line for line in other if "troupe" in line and not line.startswith(":")]
        assert not stray, (path, stray[:5])
    return lines


def turn(url: str, headers: dict[str, str], body: dict[str, Any]) -> str:
    reply = httpx.post(f"{url}/v1/chat/completions", headers=headers, json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def test_every_troupe_process_logs_json_lines_with_no_phone_number_or_secret(tmp_path: Path, ray_tmp: Path) -> None:
    port = free_port()
    proc = troupe_serve(
        tmp_path, port, TROUPE_NAMESPACE=f"troupe-logs-{os.getpid()}", RAY_TMPDIR=str(ray_tmp),
        TROUPE_API_KEYS=f"voice:platform:{PLATFORM_KEY}", VAPI_SECRET=VAPI_SECRET,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, within=240)
        platform = {"Authorization": f"Bearer {PLATFORM_KEY}", "x-vapi-caller-phone": PHONE}
        said = [{"role": "user", "content": "Hello, this is Sam."}]
        assert turn(url, platform, {"model": "maya", "messages": said})
        # the same caller's second turn, and a caller named by the body's `user` field
        assert turn(url, platform, {"model": "maya", "messages": [*said, {"role": "assistant", "content": "Hi"},
                                                                   {"role": "user", "content": "Again."}]})  # fmt: skip
        user = {"Authorization": f"Bearer {PLATFORM_KEY}"}
        assert turn(url, user, {"model": "tony", "user": "+14155550177", "messages": said})
        admin_key = (tmp_path / "admin.key").read_text().strip()
        session_logs = (tmp_path / "logs" / "ray").resolve()
        assert session_logs.is_dir() and str(session_logs).startswith(str(ray_tmp))
        # the door's and the session's lines of the turn are written as the turn ends
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = {(line["process_kind"], line["event"]) for line in ray_worker_lines(session_logs)}
            if {("door", "turn.finished"), ("session", "turn.kept")} <= events:
                break
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    # the CLI's own log file: every line JSON (nothing else writes there), Ray's driver-side lines included
    driver, other = json_lines(tmp_path / "logs" / "troupe.log")
    assert not other, other[:5]
    assert any(line["message"] == "Started a local Ray instance." for line in driver)
    workers = ray_worker_lines(session_logs)
    for line in driver + workers:
        assert list(line)[: len(FIELDS)] == list(FIELDS), line
        assert line["time"].endswith("Z") and line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert {line["process_kind"] for line in driver} == {"cli"}
    door = [line for line in workers if line["process_kind"] == "door" and line["event"] == "turn.finished"]
    session = [line for line in workers if line["process_kind"] == "session" and line["event"] == "turn.kept"]
    assert door and session, sorted({(line["process_kind"], line["event"]) for line in workers})
    first = next(line for line in door if line["persona"] == "Maya")
    assert first["caller"] == "+1415•••0100" and first["turn_id"] and first["kept_by"] == "session"
    assert any(line["turn_id"] == first["turn_id"] and line["process_id"] for line in session)  # one turn, both sides
    assert any(line["process_kind"] == "orchestrator" for line in workers)

    # no phone number, platform key, VAPI secret or admin key in any log: troupe's, the console's, Ray's
    files = [tmp_path / "serve.log", *(tmp_path / "logs").rglob("*"), *session_logs.rglob("*")]
    looked = 0
    for path in files:
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(errors="ignore")
        looked += 1
        for raw in (PHONE, PHONE[2:], "4155550177", PLATFORM_KEY, VAPI_SECRET, admin_key):
            if raw == admin_key and path.name == "serve.log":
                continue  # the first start's banner shows the admin key once, on purpose
            assert raw not in text, (path, raw)
    assert looked > 10

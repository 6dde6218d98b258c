"""The same app deployed with Ray Serve (the default door): the contract holds through Serve too."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import ray
from ray import serve

from tests.integration.conftest import make_settings, wait_until_up, write_script
from troupe.actors.session import door_alive
from troupe.app import serve_with_ray
from troupe.core.messages import DoorName
from troupe.runtime import Runtime, this_door
from troupe.testing.loopback import free_port

SERVE_KEY = "serve-key-0123456789abcdef"


@pytest.fixture(scope="module")
def serve_door(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("serve")
    script = write_script(tmp / "script.json", [
        {"when": "weather", "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}},
        {"when": "", "reply": "Hello through Serve."},
    ])  # fmt: skip
    port = free_port()
    runtime = Runtime.start(make_settings(tmp, fake_script=script, port=port, api_keys=SERVE_KEY))
    serve_with_ray(runtime, blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url)
    yield url
    serve.shutdown()
    runtime.stop()


def test_sdk_streams_and_answers_through_serve(serve_door: str) -> None:
    client = openai.OpenAI(base_url=f"{serve_door}/v1", api_key=SERVE_KEY)
    reply = client.chat.completions.create(model="tony", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == "Hello through Serve."
    chunks = list(client.chat.completions.create(
        model="maya", messages=[{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True}
    ))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello through Serve."
    assert chunks[-1].usage.total_tokens > 0
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    called = client.chat.completions.create(
        model="tony", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
    )
    deltas = [c.choices[0].delta for c in called if c.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or ()]
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Oslo"}


def test_errors_and_keys_through_serve(serve_door: str) -> None:
    key = {"Authorization": f"Bearer {SERVE_KEY}"}
    assert httpx.post(f"{serve_door}/v1/chat/completions", json={"messages": []}).status_code == 401
    unknown = httpx.post(
        f"{serve_door}/v1/chat/completions", json={"model": "zed", "messages": [{"role": "user", "content": "x"}]},
        headers=key,
    )  # fmt: skip
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    malformed = httpx.post(f"{serve_door}/chat/completions", content=b"{", headers=key)
    assert malformed.status_code == 400
    processes: Any = httpx.get(f"{serve_door}/api/processes", params={"kind": "session"}, headers=key).json()
    # the earlier test's anonymous Tony turns ran on an actor lent to the door for one-turn sessions
    assert any(p["agent"] == "Tony" and p["task"].startswith("One-turn sessions") for p in processes)


def test_the_request_id_serve_makes_up_is_no_caller_but_a_clients_own_is(serve_door: str) -> None:
    """Serve writes an X-Request-ID into every request without one: those callers stay anonymous
    (one-turn sessions, none held afterwards), while a client's own X-Request-ID names its caller."""
    key = {"Authorization": f"Bearer {SERVE_KEY}"}
    client = openai.OpenAI(base_url=f"{serve_door}/v1", api_key=SERVE_KEY, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="riley", messages=[{"role": "user", "content": "Hi"}])
    client.chat.completions.create(
        model="riley", messages=[{"role": "user", "content": "Hi"}], extra_headers={"X-Request-ID": "my-call-7"}
    )
    sessions: Any = httpx.get(f"{serve_door}/api/sessions", headers=key).json()
    riley = [s["caller_id"] for s in sessions if s["agent"] == "Riley"]
    assert riley == ["req-my-call-7"]


def troupe_serve(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """`troupe serve` in its own process on the fake model, its console in tmp_path/serve.log."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TROUPE_", "RAY_"))},
        "TROUPE_MODEL_BACKEND": "fake",
        "TROUPE_DATA_DIR": str(tmp_path),
        "TROUPE_LIFE_LOOPS_ENABLED": "false",
        "TROUPE_SESSION_POOL_SIZE": "1",
        **env,
    }
    with (tmp_path / "serve.log").open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "troupe.cli", "serve", "--port", str(port)],
            env=environment, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_troupe_serve_binds_the_replica_to_its_port(tmp_path: Path) -> None:
    """`troupe serve` as an operator runs it: its own Ray, Serve's throughput-optimized mode, the replica
    itself on --port (direct ingress) and Serve's proxy one port over; both answer. A service manager's
    SIGTERM stops it cleanly: the registry is closed and the conversation kept."""
    port = free_port()
    while not _free(port + 1):
        port = free_port()
    log = tmp_path / "serve.log"
    secrets = {"VAPI_SECRET": "vapi-secret-value-4242", "TROUPE_API_KEYS": "ops:operator:operator-secret-4242-abcd"}
    proc = troupe_serve(tmp_path, port, TROUPE_NAMESPACE=f"troupe-cli-{os.getpid()}", **secrets)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, within=120)
        # closed by default: the first start made an admin key (mode 0600) and showed it once
        key_file = tmp_path / "admin.key"
        key = key_file.read_text().strip()
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "maya", "messages": []}).status_code == 401
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
        stream = client.chat.completions.create(model="maya", messages=[{"role": "user", "content": "Hi"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert httpx.get(f"http://127.0.0.1:{port + 1}/health", timeout=10).status_code == 200  # Serve's proxy
        owner = next(
            c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port and c.pid
        )
        assert "ServeReplica" in " ".join(psutil.Process(owner).cmdline())  # the replica, not the proxy
        # a quiet console: a banner saying where and what, and none of Ray's or Serve's own chatter
        console = log.read_text()
        assert f"serving   http://127.0.0.1:{port}" in console and "troupe chat tony" in console
        assert "store     SQLite" in console and "5 executives" in console
        assert console.count(key) == 2 and f"{url}/#key={key}" in console  # the key, and the panel URL with it
        for noise in ("(raylet)", "ServeController", "Token authentication", "INFO"):
            assert noise not in console, console
        assert "Started a local Ray instance" in (tmp_path / "logs" / "troupe.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
        assert "troupe: stopping" in log.read_text()
        # no secret in any log line, troupe's or Ray's (whose logs would show a runtime_env carrying one)
        for path in [log, *(tmp_path / "logs").rglob("*")]:
            if path.is_file():
                text = path.read_text(errors="ignore")
                for secret in (key, *secrets.values(), "operator-secret-4242-abcd"):
                    assert secret.split(":")[-1] not in text or (path == log and secret == key), (path, secret)
        with closing(sqlite3.connect(tmp_path / "troupe.db")) as db:
            still_running = db.execute("SELECT kind FROM processes WHERE status = 'running'").fetchall()
            said = db.execute("SELECT content FROM messages WHERE role = 'user'").fetchall()
        assert still_running == [] and said == [("Hi",)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_two_door_replicas_serve_one_callers_conversation_in_turn(tmp_path: Path) -> None:
    """`TROUPE_DOOR_REPLICAS=2`: Serve's proxy spreads one caller's turns over both replicas, and the
    conversation continues whichever answers (its state is in the session and the store, not a replica)."""
    port = free_port()
    proc = troupe_serve(tmp_path, port, TROUPE_DOOR_REPLICAS="2", TROUPE_NAMESPACE=f"troupe-replicas-{os.getpid()}")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, "/ready", within=120)
        replicas, history = set(), []
        key = {"Authorization": f"Bearer {(tmp_path / 'admin.key').read_text().strip()}"}
        # Serve's proxy picks replicas at random among those it knows are running; the second replica can
        # still be starting when the first answers /ready, so the caller goes on (12 turns at least, up
        # to 40 or 60 s) until both have answered
        deadline, turns = time.monotonic() + 60, 0
        while turns < 12 or (len(replicas) < 2 and turns < 40 and time.monotonic() < deadline):
            i, turns = turns, turns + 1
            history.append({"role": "user", "content": f"turn {i}"})
            response = httpx.post(
                f"{url}/v1/chat/completions", json={"model": "maya", "user": "two-doors", "messages": history},
                headers=key, timeout=30,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            replicas.add(response.headers["x-troupe-replica"])
            history.append({"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]})
        assert len(replicas) == 2  # both replicas answered this caller
        with closing(sqlite3.connect(tmp_path / "troupe.db")) as db:
            said = db.execute(
                "SELECT m.content FROM messages m JOIN sessions s ON s.id = m.session_id "
                "WHERE s.caller_id = 'user-two-doors' AND m.role = 'user' ORDER BY m.seq"
            ).fetchall()
        assert [row[0] for row in said] == [f"turn {i}" for i in range(turns)]  # one continuous conversation
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()


@serve.deployment
class NameProbe:
    def __call__(self, request: Any) -> Any:
        return this_door()


def test_a_session_can_tell_a_live_door_replica_from_a_dead_one_by_its_name(serve_door: str) -> None:
    """A session holds the name of the replica whose turn is open, not its handle (which would load
    Ray Serve into every session process), and still learns when that replica is gone."""
    door = serve.run(NameProbe.bind(), name="probe", route_prefix="/probe").remote(None).result()
    try:
        assert isinstance(door, DoorName) and door.name.startswith("SERVE_REPLICA::")
        assert asyncio.run(door_alive(door))
        ray.kill(ray.get_actor(door.name, namespace=door.namespace), no_restart=True)
        deadline = time.monotonic() + 30
        while asyncio.run(door_alive(door)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not asyncio.run(door_alive(door))
    finally:
        serve.delete("probe")

"""troupe on a two-node Ray cluster on this machine, as an operator runs it: a head node and a worker node,
each a raylet with resources of its own (Ray's own `Cluster` helper, as Ray's tests do), `troupe serve`
joining it through RAY_ADDRESS with a real PostgreSQL store and two door replicas. Then the worker node
is killed under load."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.integration.conftest import wait_until_up
from tests.integration.test_store import postgres_url
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.loopback import free_port

pytestmark = pytest.mark.postgres

KEY = "cluster-admin-key-0123456789"
CALLERS = 8
PERSONAS = 5  # a persona actor per executive (specialists work as task actors)
LIFE_LOOPS = 5  # one per executive


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    base = postgres_url()
    name = f"cluster_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(base)
        await connection.execute(sql)
        await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield "postgresql+asyncpg://" + base.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any, str]]:
    from ray.cluster_utils import Cluster

    dashboard = free_port()
    head = {"num_cpus": 2, "resources": {"head": 1}, "include_dashboard": True, "dashboard_port": dashboard}
    made = Cluster(initialize_head=True, head_node_args=head)
    # an address of its own, as a second machine has (all of 127/8 is this machine's loopback)
    worker = made.add_node(num_cpus=2, resources={"worker": 1}, node_ip_address="127.0.0.2")
    made.wait_for_nodes()
    yield made, worker, f"http://127.0.0.1:{dashboard}"
    made.shutdown()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behaviour(reply="Noted, thanks.", ttft_s=0.02)) as server:
        yield server


@pytest.fixture(scope="module")
def troupe(
    cluster: tuple[Any, Any, str], database: str, upstream: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    made, _, _ = cluster
    tmp: Path = tmp_path_factory.mktemp("cluster")
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TROUPE_", "RAY_", "OPENAI_"))},
        "RAY_ADDRESS": made.address,
        "TROUPE_DATABASE_URL": database,
        "TROUPE_DOOR_REPLICAS": "2",
        "TROUPE_PLACEMENT": "spread",
        "TROUPE_SESSION_POOL_SIZE": "4",
        "TROUPE_LIFE_LOOPS_ENABLED": "true",
        "TROUPE_API_KEYS": f"ops:admin:{KEY}",
        "TROUPE_DATA_DIR": str(tmp),
        "TROUPE_NAMESPACE": f"troupe-cluster-{os.getpid()}",
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-fake-upstream",
        "TROUPE_NEWS_SOURCES": "",
    }
    with (tmp / "serve.log").open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "troupe.cli", "serve", "--port", str(port)],
            env=environment, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, "/ready", within=240)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def alive_actors(dashboard: str) -> list[Any]:
    from ray.util.state import list_actors

    return list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=2000, raise_on_missing_output=False)


def troupe_actors(dashboard: str) -> dict[str, Counter[str]]:
    """Each troupe actor class, counted by the node it lives on."""
    nodes: dict[str, Counter[str]] = {}
    for actor in alive_actors(dashboard):
        if actor.class_name in ("PersonaActor", "SessionActor", "LifeLoopActor", "Orchestrator"):
            nodes.setdefault(actor.class_name, Counter())[actor.node_id] += 1
    return nodes


def wait_for(check: Any, within: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def turn(client: openai.OpenAI, caller: str, text: str, persona: str = "tony") -> tuple[str, str]:
    """One streamed turn; returns (the reply, the door replica that answered). Raises on any failure."""
    with client.chat.completions.with_streaming_response.create(
        model=persona, messages=[{"role": "user", "content": text}], stream=True,
        extra_headers={"X-Request-ID": caller},
    ) as response:  # fmt: skip
        replica = response.headers.get("x-troupe-replica", "")
        chunks = list(response.parse())
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if finished != ["stop"]:
        raise AssertionError(f"the stream did not finish: {finished}")
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), replica


async def stored_user_messages(database: str) -> dict[str, list[str]]:
    connection = await asyncpg.connect("postgresql://" + database.split("://", 1)[1])
    rows = await connection.fetch(
        "SELECT s.caller_id, m.content FROM messages m JOIN sessions s ON s.id = m.session_id "
        "WHERE m.role = 'user' ORDER BY s.started_at, m.seq"
    )
    await connection.close()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["caller_id"], []).append(row["content"])
    return found


def test_actors_spread_over_both_nodes(troupe: str, cluster: tuple[Any, Any, str]) -> None:
    made, worker, dashboard = cluster
    head_id, worker_id = made.head_node.node_id, worker.node_id

    def started() -> dict[str, Counter[str]] | None:
        """The actors once all are up: every persona and life loop, and a full warm pool of sessions."""
        nodes = troupe_actors(dashboard)
        count = {kind: sum(nodes.get(kind, Counter()).values()) for kind in ("PersonaActor", "LifeLoopActor")}
        sessions = sum(nodes.get("SessionActor", Counter()).values())
        return nodes if count == {"PersonaActor": PERSONAS, "LifeLoopActor": LIFE_LOOPS} and sessions >= 4 else None

    nodes = wait_for(started, within=120)
    assert nodes, f"not every actor came up: {troupe_actors(dashboard)}"
    for kind in ("PersonaActor", "SessionActor", "LifeLoopActor"):
        assert nodes[kind][head_id] >= 1 and nodes[kind][worker_id] >= 1, (kind, dict(nodes[kind]))
    from ray.util.state import list_nodes

    where = {n.node_id: (n.node_ip, n.is_head_node) for n in list_nodes(address=dashboard)}
    assert set(nodes["Orchestrator"]) == {head_id}, (where, dict(nodes["Orchestrator"]))


def test_two_door_replicas_carry_one_conversation(troupe: str, upstream: FakeOpenAIServer, database: str) -> None:
    """The same caller's turns land on both replicas in turn (Serve's proxy spreads them), and the
    conversation is one: every turn's model request carries all the turns before it, and the store
    holds them in order."""
    client = openai.OpenAI(base_url=f"{troupe}/v1", api_key=KEY, max_retries=0)
    caller = f"door-{uuid.uuid4().hex[:6]}"
    replicas: list[str] = []
    said: list[str] = []
    for n in range(16):
        said.append(f"door turn {n}")
        _, replica = turn(client, caller, said[-1])
        replicas.append(replica)
        if n >= 5 and len(set(replicas)) >= 2:
            break
    assert len(set(replicas)) == 2, f"one replica answered every turn: {replicas}"
    window = min(len(said), 9)  # the model sees the last history_turns (20) messages
    last = [m["content"] for m in upstream.requests[-1]["messages"] if m["role"] == "user"]
    assert last[-window:] == said[-window:]
    stored = asyncio.run(stored_user_messages(database))
    assert stored[f"req-{caller}"] == said


def test_killing_the_worker_node_under_load(troupe: str, cluster: tuple[Any, Any, str], database: str) -> None:
    """8 callers talk while the worker node dies (its raylet and every process on it, at once). Its actors
    come back on the head within the supervision policy, each caller is served again with its
    conversation intact, no caller ever sees a 500, and every acknowledged turn is in the store."""
    made, worker, dashboard = cluster
    head_id = made.head_node.node_id
    client = openai.OpenAI(base_url=f"{troupe}/v1", api_key=KEY, max_retries=0, timeout=60)
    callers = [f"load-{n}-{uuid.uuid4().hex[:4]}" for n in range(CALLERS)]
    acknowledged: dict[str, list[str]] = {c: [] for c in callers}
    refused: Counter[int] = Counter()
    answers: list[str] = []  # the bodies of any 5xx but 503
    stop = threading.Event()

    def talk(caller: str) -> None:
        n = 0
        while not stop.is_set():
            text = f"{caller} says {n}"
            n += 1
            try:
                turn(client, caller, text)
                acknowledged[caller].append(text)
            except openai.APIStatusError as exc:
                refused[exc.status_code] += 1
                if exc.status_code >= 500 and exc.status_code != 503:
                    answers.append(exc.response.text[:500])
                time.sleep(0.5)
            except (openai.APIConnectionError, AssertionError):
                refused[0] += 1  # cut off mid-reply: not acknowledged
                time.sleep(0.5)

    def served(caller: str, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                turn(client, caller, text)
                acknowledged[caller].append(text)
                return
            except (openai.APIStatusError, openai.APIConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    for caller in callers:  # each caller has a live session before the load (the pool holds 4)
        served(caller, f"{caller} is here", within=60)
    threads = [threading.Thread(target=talk, args=(c,), daemon=True) for c in callers]
    for thread in threads:
        thread.start()
    time.sleep(8)
    before = {c: len(a) for c, a in acknowledged.items()}
    made.remove_node(worker, allow_graceful=False)
    killed_at = time.monotonic()
    time.sleep(20)
    stop.set()
    for thread in threads:
        thread.join(90)

    assert all(n > 1 for n in before.values()), f"a caller had no turn under load before the kill: {before}"
    # A door replica on the dead node takes the streams it was serving with it; for those, Ray Serve's
    # proxy answers 500 itself. troupe's own door never does, and no answer carries a stack trace.
    own = [body for body in answers if '"error"' in body]
    assert not own, f"troupe's door answered 5xx: {own}"
    assert not any("Traceback" in body for body in answers), answers

    def back_on_head() -> dict[str, Counter[str]] | None:
        nodes = troupe_actors(dashboard)
        personas, loops = nodes.get("PersonaActor", Counter()), nodes.get("LifeLoopActor", Counter())
        whole = personas[head_id] == PERSONAS and loops[head_id] == LIFE_LOOPS
        return nodes if whole and set(personas) == {head_id} and set(loops) == {head_id} else None

    assert wait_for(back_on_head, within=90), f"actors did not come back on the head: {troupe_actors(dashboard)}"
    recovered_s = time.monotonic() - killed_at
    for caller in callers:  # each caller is served again, its conversation going on where it was
        served(caller, f"{caller} is back", within=30)
    stored = asyncio.run(stored_user_messages(database))
    for caller, said in acknowledged.items():
        kept = stored.get(f"req-{caller}", [])
        missing = [text for text in said if text not in kept]
        assert not missing, f"{caller}: acknowledged turns not in the store: {missing}"
        assert kept[-1] == f"{caller} is back"
    print(
        f"\nworker node killed: actors back on the head in {recovered_s:.1f} s; refused while down: {dict(refused)}"
        f"; Serve proxy 500 bodies: {answers[:2]}"
    )
    assert httpx.get(f"{troupe}/ready", timeout=10).status_code == 200

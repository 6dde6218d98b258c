"""The memory API on a real Ray with real HTTP on loopback: a persona's memory by layer and in pages, what
troupe knows of a caller (corrections with their history and sources), and forgetting a person, which
takes their live session, transcripts and memories with it. Phone numbers are never echoed back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.integration.conftest import make_settings
from tests.integration.test_runtime import say
from troupe.app import Gateway, create_app
from troupe.runtime import Runtime
from troupe.store import SELF, Store
from troupe.testing.loopback import serving

OPERATOR = "operator-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"
KEYS = f"ops:operator:{OPERATOR}, app:client:{CLIENT}"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}


@pytest.fixture(scope="module")
def runtime(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path_factory.mktemp("memory-api"), api_keys=KEYS, insecure=False, rate_limit_per_minute=0
    )
    started = Runtime.start(settings)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def sessions(runtime: Runtime) -> Any:
    """The session client the door uses: a turn made through it is the door's own."""
    return runtime.client()


@pytest.fixture(scope="module")
def door(runtime: Runtime, sessions: Any) -> Iterator[str]:
    with serving(create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, sessions))) as url:
        yield url


@pytest.fixture
async def store(runtime: Runtime) -> AsyncIterator[Store]:
    opened = await Store.open(runtime.settings.resolved_database_url, migrate=False)
    yield opened
    await opened.close()


@pytest.fixture
async def api(door: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=door, headers=AUTH, timeout=30) as client:
        yield client


def caller_path(caller: str) -> str:
    return f"/api/callers/{quote(caller, safe='')}"


async def test_a_personas_memory_by_layer_in_pages(api: httpx.AsyncClient, store: Store) -> None:
    """Maya's memory: counts per layer (live and superseded), her core blocks, and her memories newest
    first, a page at a time, in one layer or all."""
    phone = "+14155550131"
    old = await store.add_memory("Maya", phone, "Works at Initech", kind="fact", source="call:one", channel="voice")
    await store.add_memory("Maya", phone, "Works at Globex now", kind="fact", source="call:two", supersedes=old.id)
    await store.add_memory("Maya", phone, "Asked about the product launch", kind="summary", channel="slack")
    for n in range(3):
        await store.add_memory("Maya", SELF, f"Insight {n} about growth", kind="reflection", source="reflection")
    await store.set_memory_block("Maya", SELF, "I run marketing.")
    await store.set_memory_block("Maya", phone, "Customer at Globex; reach them on +14155550131.")

    whole = (await api.get("/api/personas/maya/memory")).json()
    assert whole["persona"] == "Maya"
    assert whole["stats"] == {
        "profile": {"live": 1, "superseded": 1},
        "episode": {"live": 1, "superseded": 0},
        "knowledge": {"live": 3, "superseded": 0},
    }
    assert whole["core_block"] == {"persona": "I run marketing.", "caller": None}
    items = whole["recent"]["items"]
    assert [m["content"] for m in items] == [
        "Insight 2 about growth", "Insight 1 about growth", "Insight 0 about growth",
        "Asked about the product launch", "Works at Globex now", "Works at Initech",
    ]  # fmt: skip
    assert whole["recent"]["total"] == 6 and whole["recent"]["has_more"] is False
    initech = items[-1]
    assert initech["layer"] == "profile" and initech["kind"] == "fact" and initech["source"] == "call:one"
    assert initech["channel"] == "voice" and initech["superseded_by"] == items[-2]["id"]
    assert initech["subject"] == "+1415•••0131" and items[0]["subject"] == "self"
    assert initech["created_at"].endswith("Z") and 0 <= initech["importance"] <= 1
    assert phone not in (await api.get("/api/personas/maya/memory")).text

    first = (await api.get("/api/personas/Maya/memory", params={"layer": "knowledge", "limit": 2})).json()
    assert [m["content"] for m in first["recent"]["items"]] == ["Insight 2 about growth", "Insight 1 about growth"]
    assert first["recent"]["total"] == 3 and first["recent"]["has_more"] is True
    rest = (await api.get("/api/personas/Maya/memory", params={"layer": "knowledge", "limit": 2, "offset": 2})).json()
    assert [m["content"] for m in rest["recent"]["items"]] == ["Insight 0 about growth"]
    assert rest["recent"]["has_more"] is False

    theirs = (await api.get("/api/personas/Maya/memory", params={"caller": phone})).json()
    assert theirs["stats"]["knowledge"] == {"live": 0, "superseded": 0} and theirs["recent"]["total"] == 3
    assert theirs["core_block"]["caller"] == "Customer at Globex; reach them on +1415•••0131."
    assert phone not in (await api.get("/api/personas/Maya/memory", params={"caller": phone})).text


async def test_a_callers_memory_shows_each_correction_with_its_history(api: httpx.AsyncClient, store: Store) -> None:
    phone = "+14155550142"
    boston = await store.add_memory("Tony", phone, "Lives in Boston", kind="fact", source="call:first", channel="voice")
    denver = await store.add_memory(
        "Tony", phone, "Moved to Denver", kind="fact", source="call:second", channel="voice", supersedes=boston.id
    )
    await store.add_memory("Jordan", phone, "Prefers invoices by email", kind="fact", source="slack:thread")
    await store.add_memory("Tony", phone, "Talked through the move and a new office", kind="summary", channel="voice")
    await store.add_memory("Tony", phone, f"Call back on {phone}", kind="fact", source="remember")
    await store.set_memory_block("Tony", phone, "Moved to Denver; likes short calls.")

    response = await api.get(caller_path(phone) + "/memory")
    assert response.status_code == 200, response.text
    assert phone not in response.text
    known = response.json()
    assert known["caller"] == "+1415•••0142"
    live = {(m["persona"], m["content"], m["source"]) for m in known["profile"]["live"]}
    assert live == {
        ("Tony", "Moved to Denver", "call:second"),
        ("Jordan", "Prefers invoices by email", "slack:thread"),
        ("Tony", "Call back on +1415•••0142", "remember"),
    }
    [corrected] = known["profile"]["history"]
    assert (corrected["content"], corrected["source"], corrected["persona"]) == (
        "Lives in Boston",
        "call:first",
        "Tony",
    )
    assert corrected["superseded_by"] == denver.id and corrected["superseded_at"]
    assert corrected["replaced_by"] == {"id": denver.id, "content": "Moved to Denver", "source": "call:second"}
    [episode] = known["episodes"]
    assert episode["content"] == "Talked through the move and a new office"
    assert episode["channel"] == "voice" and episode["created_at"] and episode["persona"] == "Tony"
    assert [(b["persona"], b["content"]) for b in known["core_blocks"]] == [
        ("Tony", "Moved to Denver; likes short calls.")
    ]
    assert known["counts"]["profile"] == {"live": 3, "superseded": 1}
    assert known["counts"]["episode"] == {"live": 1, "superseded": 0} and known["counts"]["core_blocks"] == 1


async def test_forgetting_a_caller_takes_everything_of_theirs(
    api: httpx.AsyncClient, store: Store, runtime: Runtime, sessions: Any
) -> None:
    phone = "+14155550177"
    assert (await say(runtime, phone, "Hello, remember my order", client=sessions))[-1].kind == "done"
    assert any(s.caller_id == phone for s in await runtime.orchestrator.list_sessions.remote())  # live
    fact = await store.add_memory("Tony", phone, "Ordered the blue model", kind="fact", source="call:x")
    await store.add_memory("Tony", phone, "Ordered the red model", kind="fact", source="call:y", supersedes=fact.id)
    await store.add_memory("Maya", phone, "Asked for the catalogue", kind="summary", channel="chat")
    await store.set_memory_block("Tony", phone, "Has an order open.")
    other = "+14155550178"
    await store.add_memory("Tony", other, "Someone else entirely", kind="fact")
    events_before = len(await runtime.orchestrator.events_since.remote(0, 10_000))

    response = await api.delete(caller_path(phone))
    assert response.status_code == 200, response.text
    assert phone not in response.text
    answer = response.json()
    assert answer["caller"] == "+1415•••0177"
    deleted = answer["deleted"]
    assert deleted["live_sessions"] == 1 and deleted["sessions"] == 1 and deleted["messages"] == 2
    assert deleted["memories"] == 3 and deleted["blocks"] == 1 and deleted["callers"] == 1

    assert await store.recall("Tony", subject=phone, query="order") == []
    assert await store.recall("Tony", subject=phone, mode="newest") == []
    assert await store.memories_of(None, phone) == [] and await store.memory_blocks(subject=phone) == []
    assert await store.get_caller(phone) is None and await store.latest_persona(phone) is None
    assert all(s.caller_id != phone for s in await store.list_sessions(status=None))
    assert all(s.caller_id != phone for s in await runtime.orchestrator.list_sessions.remote())
    assert [m.content for m in await store.memories_of(None, other)] == ["Someone else entirely"]
    events = (await runtime.orchestrator.events_since.remote(0, 10_000))[events_before:]
    assert [e for e in events if e["type"] == "caller.forgotten" and e["memories"] == 3]
    assert (await api.get(caller_path(phone) + "/memory")).status_code == 404
    gone = await api.delete(caller_path(phone))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"

    # the person may call again: a new conversation, with nothing of the old one
    assert (await say(runtime, phone, "Hi, first time", client=sessions))[-1].kind == "done"
    [fresh] = [s for s in await store.list_sessions(status=None) if s.caller_id == phone]
    assert [m.content for m in await store.load_messages(fresh.id) if m.role == "user"] == ["Hi, first time"]


async def test_forgetting_needs_an_operator_from_the_panels_own_page(door: str, store: Store) -> None:
    phone = "+14155550188"
    await store.add_memory("Tony", phone, "Likes jazz", kind="fact")
    path = caller_path(phone)
    async with httpx.AsyncClient(base_url=door, timeout=30) as anyone:
        assert (await anyone.delete(path)).status_code == 401
        assert (await anyone.delete(path, headers={"Authorization": f"Bearer {CLIENT}"})).status_code == 403
        assert (await anyone.get(path + "/memory")).status_code == 401
    async with httpx.AsyncClient(base_url=door, timeout=30) as panel:
        assert (await panel.post("/api/login", json={"key": OPERATOR})).status_code == 200
        assert (await panel.get(path + "/memory")).status_code == 200  # reading by cookie is fine
        assert (await panel.delete(path)).status_code == 403  # no Origin: not from the panel's page
        assert (await panel.delete(path, headers={"Origin": "https://evil.example"})).status_code == 403
        assert [m.content for m in await store.memories_of(None, phone)] == ["Likes jazz"]  # nothing went
        own = await panel.delete(path, headers={"Origin": door})
        assert own.status_code == 200 and own.json()["deleted"]["memories"] == 1


async def test_unknown_names_and_layers_are_refused(api: httpx.AsyncClient) -> None:
    unknown = await api.get("/api/personas/nobody/memory")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    layer = await api.get("/api/personas/tony/memory", params={"layer": "dreams"})
    assert layer.status_code == 422 and layer.json()["error"]["param"] == "layer"
    assert (await api.get(caller_path("+14155550999") + "/memory")).status_code == 404
    assert (await api.delete(caller_path("slack:U0NOBODY"))).status_code == 404
    own = await api.delete(caller_path("self"))  # a persona's own knowledge is not a person's data
    assert own.status_code == 422 and own.json()["error"]["param"] == "caller"

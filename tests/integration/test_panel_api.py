"""The control panel's API over real HTTP, against a real troupe: every list a page with its total, the
conversation view turn by turn (timing, tokens, a reply cut off), callers masked and revealed only through
an audited action, the charts' series counting the turns made, events typed by group, processes by node,
and the static files (the vendored chart library with its licence) served without a key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from tests.integration.conftest import make_settings, write_script
from troupe.app import Gateway, create_app
from troupe.testing.loopback import serving

OPERATOR = "operator-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef0123"
PLATFORM = "platform-key-0123456789abcdef"
SLOW = {"content": " ".join(f"word{i}" for i in range(40)), "chunk_delay_s": 0.05}
PHONE = "+14155550142"


@pytest.fixture
def door(start_runtime: Any, tmp_path: Path) -> Iterator[str]:
    script = write_script(
        tmp_path / "script.json",
        [{"when": "slow", "reply": SLOW}, {"when": "", "reply": "Hello from the fake model."}],
    )
    runtime = start_runtime(make_settings(tmp_path, fake_script=script, rate_limit_per_minute=0, insecure=False))
    keys = f"ops:operator:{OPERATOR}, root:admin:{ADMIN}, vapi:platform:{PLATFORM}"
    settings = runtime.settings.model_copy(update={"api_keys": SecretStr(keys)})
    with serving(create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))) as url:
        yield url


def get(door: str, path: str, key: str = OPERATOR, **params: Any) -> httpx.Response:
    return httpx.get(f"{door}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def eventually(check: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def call(door: str, content: str, phone: str = PHONE) -> None:
    reply = httpx.post(
        f"{door}/v1/chat/completions",
        json={"model": "tony", "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": f"Bearer {PLATFORM}", "X-Vapi-Caller-Phone": phone},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text


def test_a_conversation_turn_by_turn_with_its_caller_masked_until_an_audited_reveal(door: str) -> None:
    call(door, "How is the roadmap?")
    # the caller hangs up three words into the second reply
    body = {"model": "tony", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
    headers = {"Authorization": f"Bearer {PLATFORM}", "X-Vapi-Caller-Phone": PHONE}
    with httpx.stream("POST", f"{door}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        heard = 0
        for line in response.iter_lines():
            heard += '"content":"word' in line
            if heard >= 3:
                break

    def two_turns() -> Any:
        page = get(door, "/api/conversations", caller="0142", limit=5).json()
        if not page["items"]:
            return None
        shown = get(door, f"/api/conversations/{page['items'][0]['session_id']}").json()
        return (page, shown) if len(shown["turns"]) == 2 and shown["turns"][1]["duration_ms"] else None

    page, shown = eventually(two_turns)
    assert page["total"] == 1 and page["items"][0]["caller"] == "+1415•••0142" and PHONE not in str(page)
    first, cut = shown["turns"]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][1]["content"] == "Hello from the fake model." and not first["interrupted"]
    assert first["ttft_ms"] is not None and first["duration_ms"] >= first["ttft_ms"] >= 0
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0
    assert cut["interrupted"] and cut["messages"][-1]["content"].startswith("word0 word1 word2")
    assert shown["totals"]["interrupted"] == 1 and PHONE not in str(shown)

    # an operator's plain contract arrays mask the caller too; an admin's are the contract's own
    assert {s["caller_id"] for s in get(door, "/api/sessions").json()} == {"+1415•••0142"}
    assert {s["caller_id"] for s in get(door, "/api/sessions", ADMIN).json()} == {PHONE}
    assert PHONE not in get(door, "/api/processes").text

    # the reveal: the number, and an audit entry an admin can read (an operator cannot)
    session_id = page["items"][0]["session_id"]
    revealed = httpx.post(
        f"{door}/api/conversations/{session_id}/reveal", headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert revealed.status_code == 200 and revealed.json()["caller_id"] == PHONE
    assert get(door, "/api/audit").status_code == 403
    audit = get(door, "/api/audit", ADMIN).json()
    assert audit["total"] == 1 and audit["items"][0]["actor"] == "ops" and audit["items"][0]["action"] == "reveal"
    assert audit["items"][0]["subject"] == "+1415•••0142" and PHONE not in str(audit)
    events = eventually(lambda: get(door, "/api/events/log", group="audit").json()["items"])
    assert events[0]["type"] == "audit.reveal" and events[0]["actor"] == "ops" and PHONE not in str(events)
    assert get(door, "/api/conversations/nope").status_code == 404


def test_every_list_is_a_page_with_its_total_and_the_contract_arrays_stay(door: str) -> None:
    client = openai.OpenAI(base_url=f"{door}/v1", api_key=PLATFORM, max_retries=0)  # no caller id at all
    for i in range(5):
        client.chat.completions.create(model="tony", messages=[{"role": "user", "content": f"plain {i}"}])
    for i in range(3):
        call(door, f"identified {i}", phone=f"+1415555020{i}")

    def all_kept() -> Any:
        page = get(door, "/api/conversations", limit=3).json()
        return page if page["total"] == 8 else None

    first = eventually(all_kept)
    assert len(first["items"]) == 3 and first["has_more"] and first["offset"] == 0
    last = get(door, "/api/conversations", limit=3, offset=6).json()
    assert len(last["items"]) == 2 and not last["has_more"]
    seen = {c["session_id"] for c in first["items"]} | {c["session_id"] for c in last["items"]}
    assert len(seen) == 5  # pages do not overlap
    assert get(door, "/api/conversations", status="active", limit=20).json()["total"] == 3  # the identified
    assert get(door, "/api/conversations", caller="+14155550201", limit=20).json()["total"] == 1
    assert get(door, "/api/conversations", caller="02", limit=20).status_code == 422  # too short to search by

    processes = get(door, "/api/processes", limit=2).json()
    assert set(processes) == {"items", "total", "offset", "has_more"} and len(processes["items"]) == 2
    personas = get(door, "/api/processes", kind="persona", limit=50).json()
    assert personas["total"] == len(get(door, "/api/processes", kind="persona").json()) == 5  # as the plain array
    assert all(p["node"] is None or p["node"]["name"].startswith("head") for p in processes["items"])
    assert get(door, "/api/processes", limit=0).status_code == 422
    assert get(door, "/api/processes", limit=1000).status_code == 422
    assert get(door, "/api/events/log", group="nonsense").status_code == 422
    assert isinstance(get(door, "/api/sessions").json(), list)
    assert {p["name"]: p["live_sessions"] for p in get(door, "/api/personas").json()}["Tony"] == 3
    sessions = get(door, "/api/sessions", limit=2).json()
    assert sessions["total"] == 3 and len(sessions["items"]) == 2 and sessions["has_more"]
    assert get(door, "/api/runs", limit=5).json() == {"items": [], "total": 0, "offset": 0, "has_more": False}
    assert get(door, "/api/posts", offset=0).json()["total"] == 0

    # the charts count the turns made, by persona, with their time to first token
    series = eventually(lambda: (s := get(door, "/api/series").json())["totals"]["turns"] == 8 and s)
    assert series["totals"]["turns_by_persona"]["Tony"] == 8 and series["totals"]["ttft_p50_ms"]["Tony"] is not None
    assert sum(p["turns"] for p in series["points"]) == 8 and len(series["points"]) == 60
    assert series["budgets"]["Tony"] > 0 and "Tony" in series["spent_usd"]
    day = get(door, "/api/series", window="day").json()
    assert day["totals"]["turns"] == 8 and len(day["points"]) == 144
    assert get(door, "/api/series", window="week").status_code == 422

    # pool churn is its own group, so the feed can leave it out
    groups = {g: get(door, "/api/events/log", group=g, limit=1).json()["total"] for g in ("conversation", "pool")}
    assert groups["conversation"] >= 3 and groups["pool"] >= 1
    tony = get(door, "/api/events/log", persona="tony", limit=200).json()["items"]
    assert tony and all(e["agent"] == "Tony" for e in tony)
    tree = get(door, "/api/processes/tree").json()
    kinds = {kind for node in tree["nodes"] for kind in node["kinds"]}
    assert {"orchestrator", "persona", "life_loop"} <= kinds and tree["nodes"][0]["name"].startswith("head")


def test_the_panel_files_are_served_without_a_key_and_nothing_else_is(door: str) -> None:
    licence = httpx.get(f"{door}/static/vendor/uplot/LICENSE")
    assert licence.status_code == 200 and "MIT" in licence.text
    script = httpx.get(f"{door}/static/vendor/uplot/uPlot.iife.min.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{door}/static/panel.js").status_code == 200
    for path in ("/static/../api.py", "/static/%2e%2e/api.py", "/static/index.html", "/static/nothing.js"):
        answer = httpx.get(f"{door}{path}")  # a client may fold the "..": then it is a route that takes a key
        assert answer.status_code in (401, 404) and "import" not in answer.text, path
    assert httpx.get(f"{door}/api/series").status_code == 401  # the data behind the charts takes a key


def test_an_operator_forgetting_a_caller_is_audited(door: str) -> None:
    call(door, "Remember me")
    eventually(lambda: get(door, "/api/conversations", caller=PHONE, limit=1).json()["total"] == 1)
    gone = httpx.delete(f"{door}/api/callers/{PHONE}", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30)
    assert gone.status_code == 200
    audit = get(door, "/api/audit", ADMIN).json()["items"]
    assert [(a["action"], a["subject"]) for a in audit] == [("forget", "+1415•••0142")]
    assert get(door, "/api/conversations", caller=PHONE, limit=1).json()["total"] == 0
    asyncio.run(asyncio.sleep(0))

"""Memory a caller can feel, end to end on a real Ray with real HTTP on loopback, on both stores: one
number makes thirty calls through the completions door (as VAPI sends them), each followed by VAPI's
end-of-call report, and each plants a fact the persona's model extracts (a fake provider on loopback
that extracts as a model would, from the brief it is sent). Then the caller asks about the facts."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
from sqlalchemy import text

from tests.integration.conftest import make_settings
from tests.integration.test_life import life_loop, life_loop_back, local, runs
from tests.integration.test_runtime import wait_for
from tests.integration.test_store import throwaway_postgres
from troupe.app import Gateway, create_app
from troupe.core.chat import ToolCall
from troupe.store import Store
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.loopback import serving

NUMBER = "+14155550177"
SECRET = "vapi-shared-secret"
FILLER = [
    "I play tennis on Tuesday evenings", "my office is in the Denver building", "I take my coffee black",
    "my team has eleven engineers", "I drive a green Subaru", "my brother is a dentist in Ohio",
    "I prefer calls before noon", "our fiscal year ends in June", "I am learning Portuguese",
    "my dog is a beagle", "I moved here from Austin", "my manager is called Priya", "I hate long slide decks",
    "we use Jira for tickets", "I run a half marathon every spring", "my desk faces the river",
    "I was a teacher before this job", "our offsite is in Tahoe", "I keep a paper notebook",
    "my favourite band is Wilco", "I am allergic to peanuts", "our biggest client is in Toronto",
    "I bike to work when it is dry", "my wife works in insurance", "I read history books at night",
    "we ship releases on Thursdays", "I grew up near Lake Michigan",
]  # fmt: skip
PLANTED = {3: "my daughter is called Emma", 7: "our printing vendor is Acme Print", 11: "the audit deadline is May 9"}
CORRECTION = (29, 7, "we dropped Acme Print and our printing vendor is now Zenith Press")


def said_in(call: int) -> str:
    if call == CORRECTION[0]:
        return f"Call {call}: {CORRECTION[2]}."
    return f"Call {call}: {PLANTED.get(call) or FILLER[(call - 1) % len(FILLER)]}."


def provider(body: dict[str, Any]) -> str:
    """A model provider that does what troupe's briefs ask: extraction as JSON (a correction updates the
    known fact it corrects), anything else a short reply."""
    asked = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "") or ""
    if "Reply with JSON only" in asked and '"summary"' in asked:
        known, conversation = asked.split("The conversation:", 1)
        operations: list[dict[str, Any]] = []
        for number, fact in dict(re.findall(r"Call (\d+): ([^.\n]+)\.", conversation)).items():
            kept = f"The caller said {fact}."
            if kept in known:
                continue  # already known: nothing to add
            operation: dict[str, Any] = {"op": "add", "fact": kept, "importance": 0.6}
            if int(number) == CORRECTION[0]:
                corrected = re.search(r'\{"id": (\d+), "fact": "[^"]*Acme Print', known)
                assert corrected, "the brief did not show the fact being corrected"
                operation = {"op": "update", "id": int(corrected.group(1)), "fact": kept}
            operations.append(operation)
        return json.dumps({"summary": "A catch-up call.", "facts": operations})
    return "Noted, thanks."


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(Behaviour(reply_fn=provider)) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | None]:
    if request.param == "sqlite":
        yield None  # the embedded default, in the data directory
        return
    async with throwaway_postgres("m") as url:
        yield url


@pytest.fixture
def door(start_runtime: Any, tmp_path: Path, upstream: FakeOpenAIServer, database: str | None) -> Iterator[Any]:
    overrides = {"database_url": database} if database else {}
    settings = make_settings(
        tmp_path, model_backend="endpoint", openai_base_url=upstream.base_url, openai_api_key="test-key",
        vapi_secret=SECRET, rate_limit_per_minute=0, **overrides,
    )  # fmt: skip
    runtime = start_runtime(settings)
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        yield url, runtime


def call(url: str, number: int, words: str) -> None:
    """One call through the completions door, as VAPI's custom LLM sends it, then its end-of-call report."""
    call_id = f"call-{number}-{uuid.uuid4().hex[:6]}"
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="tony", stream=True, messages=[{"role": "user", "content": words}],
        extra_body={"call": {"id": call_id, "customer": {"number": NUMBER}}},
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip() == "Noted, thanks."
    report = {
        "type": "end-of-call-report", "endedReason": "customer-ended-call",
        "call": {"id": call_id, "customer": {"number": NUMBER}},
        "artifact": {"transcript": f"User: {words}\nAI: Noted, thanks."},
    }  # fmt: skip
    answer = httpx.post(f"{url}/vapi/events", json={"message": report}, headers={"X-Vapi-Secret": SECRET})
    assert answer.status_code == 200


async def open_store(runtime: Any) -> Store:
    return await Store.open(runtime.settings.resolved_database_url, migrate=False)


async def memories(runtime: Any, **filters: Any) -> list[Any]:
    store = await open_store(runtime)
    try:
        return await store.memories_of("Tony", NUMBER, **filters)
    finally:
        await store.close()


def prompt_of_last_turn(upstream: FakeOpenAIServer) -> str:
    turns = [r for r in upstream.requests if "Reply with JSON only" not in json.dumps(r["messages"][-1])]
    return str(turns[-1]["messages"][0]["content"])


async def calls(url: str, runtime: Any, last: int) -> None:
    """Calls 1 to `last`, each one's report kept before the next call (as calls a day apart would be)."""
    for number in range(1, last + 1):
        await asyncio.to_thread(call, url, number, said_in(number))

        async def kept(number: int = number) -> bool:  # the report is kept in the background
            return len(await memories(runtime, layer="episode")) >= number

        assert await wait_for(kept, within=30), f"call {number} was not remembered"


async def test_a_fact_from_call_3_of_30_reaches_the_prompt_and_a_correction_wins(
    door: Any, upstream: FakeOpenAIServer
) -> None:
    url, runtime = door
    await calls(url, runtime, 29)
    facts = await memories(runtime, layer="profile")
    planted = {re.sub(r"^Call \d+: ", "The caller said ", said_in(n)) for n in range(1, 30)}
    assert {f.content for f in facts} == planted and sum(1 for f in facts if f.superseded_by) == 1
    episodes = await memories(runtime, layer="episode")
    assert {e.channel for e in episodes} == {"voice"} and all(e.source == "vapi" for e in episodes)

    # call 30: the caller asks about what they said in calls 3 and 11, and about the vendor (corrected in 29)
    await asyncio.to_thread(call, url, 30, "Sorry, what is my daughter called again?")
    assert "The caller said my daughter is called Emma." in prompt_of_last_turn(upstream)
    await asyncio.to_thread(call, url, 31, "When was that audit deadline of ours?")
    assert "The caller said the audit deadline is May 9." in prompt_of_last_turn(upstream)
    await asyncio.to_thread(call, url, 32, "Which printing vendor do we use these days?")
    prompt = prompt_of_last_turn(upstream)
    assert "now Zenith Press" in prompt
    assert "our printing vendor is Acme Print." not in prompt  # superseded: it never comes back
    # the original is kept, with what superseded it and when
    (old,) = [f for f in await memories(runtime, layer="profile") if f.superseded_by]
    assert "Acme Print." in old.content and old.superseded_at is not None


async def test_forget_removes_a_fact_everywhere_and_memory_outlives_a_restart(
    door: Any, upstream: FakeOpenAIServer, start_runtime: Any
) -> None:
    url, runtime = door
    await calls(url, runtime, 3)
    # VAPI runs the persona's `forget` tool for the caller ("please forget my daughter's name")
    forgot = await runtime.orchestrator.run_persona_tool.remote(
        "Tony", NUMBER, ToolCall(id="t1", name="forget", arguments='{"fact": "the name of my daughter"}')
    )
    assert forgot == "Forgotten: The caller said my daughter is called Emma."
    store = await open_store(runtime)
    try:
        for mode in ("hybrid", "text", "vector"):
            found = await store.recall("Tony", subject=NUMBER, query="daughter Emma", mode=mode)
            assert all("Emma" not in m.content for m in found), mode
        async with store.engine.connect() as conn:
            if store.engine.dialect.name == "sqlite":
                left = (
                    await conn.execute(text("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'Emma'"))
                ).scalar()
            else:
                left = (await conn.execute(text("SELECT count(*) FROM memories WHERE content LIKE '%Emma%'"))).scalar()
        assert left == 0
    finally:
        await store.close()

    runtime.stop()  # memory is the store's: a new troupe on the same database knows the caller
    again = start_runtime(runtime.settings)
    app = create_app(Gateway(again.settings, again.catalog, again.orchestrator, again.client()))
    with serving(app) as url_again:
        await asyncio.to_thread(call, url_again, 4, "Remind me, where is my office again?")
    assert "The caller said my office is in the Denver building." in prompt_of_last_turn(upstream)
    assert "Emma" not in prompt_of_last_turn(upstream)


async def test_consolidation_merges_rewrites_the_core_block_and_runs_once_per_slot_across_a_restart(
    door: Any, upstream: FakeOpenAIServer, start_runtime: Any
) -> None:
    """The nightly sleep-time pass: the same fact kept twice (two conversations said it) is merged, the
    caller's core block is rewritten from what is live, and the next call's prompt carries it; a kill
    of the life loop and a restart of troupe never run the same night's slot twice."""
    url, runtime = door
    store = await open_store(runtime)
    try:
        await store.add_memory("Tony", NUMBER, "The caller's daughter Emma starts school in September.",
                               kind="fact", importance=0.9)  # fmt: skip
        await store.add_memory("Tony", NUMBER, "The caller's daughter, Emma, starts school in September.", kind="fact")
        await store.add_memory("Tony", NUMBER, "The caller's company is moving offices in spring.", kind="fact")
    finally:
        await store.close()
    tony = life_loop(runtime)
    (schedule,) = [s for s in await tony.schedules.remote() if s["activity"] == "consolidation"]
    minute, hour = (int(part) for part in schedule["cron_expression"].split()[:2])
    night = local(26, hour, minute + 2)
    assert "consolidation" in await tony.tick.remote(night)
    (run,) = await runs(runtime, activity="consolidation")
    assert run.status == "completed" and "merged 1 duplicate" in run.output, run.output
    live = [m.content for m in await memories(runtime, layer="profile", live=True)]
    assert len(live) == 2 and "The caller's daughter, Emma, starts school in September." in live

    await asyncio.to_thread(call, url, 1, "Hello again, Tony.")
    assert "- The caller's daughter, Emma, starts school in September." in prompt_of_last_turn(upstream)

    ray.kill(tony, no_restart=True)  # the supervisor brings the life loop back; the slot is taken
    tony = await life_loop_back(runtime)
    assert "consolidation" not in await tony.tick.remote(night + timedelta(minutes=5))
    runtime.stop()
    again = start_runtime(runtime.settings)
    assert "consolidation" not in await life_loop(again).tick.remote(night + timedelta(minutes=10))
    assert len(await runs(again, activity="consolidation")) == 1

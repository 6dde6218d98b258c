"""The runtime against an OpenAI-compatible endpoint on loopback, through the real `openai` SDK:
what the model is sent, idle summaries reaching the next call, budgets, and an endpoint that is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import make_settings
from tests.integration.test_runtime import processes, say, text_of, wait_for
from troupe.store import Store
from troupe.testing.fake_openai import FakeOpenAIServer
from troupe.testing.loopback import free_port


@pytest.fixture
def upstream() -> Any:
    with FakeOpenAIServer() as server:
        yield server


async def test_endpoint_turns_carry_the_persona_and_memory(start_runtime: Any, tmp_path: Path, upstream: Any) -> None:
    runtime = start_runtime(
        make_settings(
            tmp_path,
            model_backend="endpoint",
            openai_base_url=upstream.base_url,
            openai_api_key="test-key",
            model="gpt-4o-mini",
            session_idle_timeout_s=1.0,
        )
    )
    events = await say(runtime, "+14155550100", "My name is Dana and I run payments.")
    assert events[-1].kind == "done" and text_of(events)
    sent = upstream.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert "Tony" in sent["messages"][0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "My name is Dana and I run payments."}

    async def costed() -> Any:  # gpt-4o-mini is in the pricing table
        return (await processes(runtime, kind="session", agent="Tony"))[0].metrics.estimated_cost > 0

    await wait_for(costed)

    # idle for longer than the timeout: the session ends and the conversation is summarised into
    # Tony's memory of the caller
    async def ended() -> Any:
        return not await runtime.orchestrator.list_sessions.remote()

    await wait_for(ended, within=30)
    store = await Store.open(runtime.settings.resolved_database_url)
    try:

        async def summarised() -> Any:
            return await store.recall("Tony", subject="+14155550100")

        memories = await wait_for(summarised, within=30)
        assert memories[0].kind == "summary"
    finally:
        await store.close()

    await say(runtime, "+14155550100", "Hi again.")
    system_prompt = upstream.requests[-1]["messages"][0]["content"]
    assert memories[0].content in system_prompt


async def test_session_budget_blocks_the_next_model_call(start_runtime: Any, tmp_path: Path, upstream: Any) -> None:
    runtime = start_runtime(
        make_settings(
            tmp_path,
            model_backend="endpoint",
            openai_base_url=upstream.base_url,
            openai_api_key="k",
            model="gpt-4o",
            session_budget_usd=0.000001,
        )
    )
    first = await say(runtime, "+14155550101", "hello")
    assert first[-1].kind == "done"
    calls = len(upstream.requests)
    second = await say(runtime, "+14155550101", "hello again")
    assert second[-1].kind == "error" and second[-1].code == "budget_exceeded"
    assert len(upstream.requests) == calls  # no model call was made
    store = await Store.open(runtime.settings.resolved_database_url)
    try:
        assert any(e.scope == "session" for e in await store.budget_events())
    finally:
        await store.close()


async def test_an_endpoint_that_is_down_fails_the_turn_cleanly(start_runtime: Any, tmp_path: Path) -> None:
    runtime = start_runtime(
        make_settings(
            tmp_path,
            model_backend="endpoint",
            openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
            openai_api_key="sk-secret-value",
            model_max_retries=0,
            model_timeout_s=5,
        )
    )
    events = await say(runtime, "+14155550102", "hello?")
    assert events[-1].kind == "error"
    assert events[-1].code == "model_unavailable" and events[-1].status == 503
    assert "sk-secret-value" not in events[-1].text

    async def failed() -> Any:
        found = (await processes(runtime, kind="session", agent="Tony"))[0]
        return found if found.status == "failed" else None

    assert (await wait_for(failed)).error
    # the actor is still alive and serves the next turn (which fails the same way, not with a crash)
    again = await say(runtime, "+14155550102", "still there?")
    assert again[-1].code == "model_unavailable"

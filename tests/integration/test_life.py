"""Life loops end to end: a clock the test controls drives a persona through a day in seconds; feeds
come from fixtures on loopback, the model is a fake provider on loopback that writes from its brief,
posts go to a fake Slack and a social webhook; the execution log, the control-panel API, a kill and a
restart, and the digest of its life reaching a conversation are checked as an operator or caller sees them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.integration.conftest import make_settings, write_script
from tests.integration.test_runtime import wait_for
from troupe.app import Gateway, create_app
from troupe.store import Store
from troupe.testing.fake_feeds import FakeFeedsServer
from troupe.testing.fake_openai import Behaviour, FakeOpenAIServer
from troupe.testing.fake_slack import FakeSlackServer
from troupe.testing.loopback import LoopbackServer, serving

PACIFIC = timedelta(hours=-8)  # Tony's zone (America/Los_Angeles) in November


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment in late November 2026 on Tony's wall clock, as UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC) - PACIFIC


def writes(body: dict[str, Any]) -> str:
    """The fake model provider: writes what each brief asks for, from what the brief (and prompt) holds."""
    messages = body["messages"]
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if "give your own take" in asked:
        title = re.search(r"Title: (.+)", asked)
        return f"My take on {title.group(1) if title else 'it'}: this matters for how we run things."
    if "what have you been reading" in asked.lower():
        titles = re.findall(r"You read '([^']+)'", system)
        return "Lately I read " + "; ".join(titles) + "." if titles else "Nothing lately."
    if "public post" in asked:
        return "Boring systems are a feature. Today I read about error budgets and I am convinced again."
    if "journal entry" in asked:
        return "Long day. Read the news, checked on the team, thought about the migration."
    if "Reflect on" in asked:
        return "Slow down before the migration.\nThe team needs fewer pages at night.\nRead less, build more."
    if "goals" in asked.lower() or "Check in on your team" in asked:
        return "On track mostly; the migration is the risk and I will pair with Priya on it this week."
    return "Tony here."


class SocialWebhook(LoopbackServer):
    """A social network's post webhook on loopback: records posts with their key; can be down."""

    label = "social webhook"

    def __init__(self) -> None:
        self.received: list[tuple[str | None, dict[str, Any]]] = []
        self.down = False
        app = FastAPI()

        @app.post("/posts")
        async def take(request: Request) -> Any:
            if self.down:
                return JSONResponse({"error": "maintenance"}, status_code=503)
            self.received.append((request.headers.get("authorization"), await request.json()))
            return {"ok": True}

        super().__init__(app)

    @property
    def url(self) -> str:
        return f"{self.root}/posts"


@pytest.fixture
def outside() -> Iterator[tuple[FakeFeedsServer, FakeOpenAIServer, FakeSlackServer, SocialWebhook]]:
    with (
        FakeFeedsServer() as feeds,
        FakeOpenAIServer(Behaviour(reply_fn=writes)) as model,
        FakeSlackServer() as slack,
        SocialWebhook() as social,
    ):
        feeds.feeds.slow_delay_s = 5.0
        yield feeds, model, slack, social


def life_settings(tmp: Path, outside: Any, **extra: Any) -> Any:
    feeds, model, slack, social = outside
    return make_settings(
        tmp,
        model_backend="endpoint",
        openai_base_url=model.base_url,
        openai_api_key="test-key",
        news_sources=",".join(
            [feeds.url("rss.xml"), feeds.url("feed.json"), feeds.url("down"), feeds.url("malformed.xml")]
        ),
        news_blocked_topics="celebrity gossip",
        news_timeout_s=2.0,
        life_slack_channel="#company-life",
        slack_bot_token="xoxb-test",
        slack_api_base_url=slack.base_url,
        social_webhook_url=social.url,
        outbound_retries=0,
        **extra,
    )


def life_loop(runtime: Any, persona: str = "tony") -> Any:
    return ray.get_actor(f"life-{persona}", namespace=runtime.settings.namespace)


async def life_loop_back(runtime: Any, persona: str = "tony") -> Any:
    """The persona's life loop once its supervisor has brought it back (after a kill)."""

    async def back() -> Any:
        try:
            handle = life_loop(runtime, persona)
            await handle.ping.remote()
            return handle
        except Exception:
            return None

    return await wait_for(back, within=60)


async def runs(runtime: Any, persona: str = "Tony", activity: str | None = None) -> list[Any]:
    store = await Store.open(runtime.settings.resolved_database_url)
    try:
        return await store.life_runs(persona, activity, limit=500)
    finally:
        await store.close()


async def live_through(handle: Any, start: datetime, end: datetime, step_min: int = 15) -> list[str]:
    ran: list[str] = []
    now = start
    while now <= end:
        ran.extend(await handle.tick.remote(now))
        now += timedelta(minutes=step_min)
    return ran


async def test_a_day_of_life_on_a_driven_clock(start_runtime: Any, tmp_path: Path, outside: Any) -> None:
    _, _, slack, social = outside
    social.down = True  # the social network is down all day: posts wait for it, never lost
    runtime = start_runtime(life_settings(tmp_path, outside))
    tony = life_loop(runtime)

    ran = await live_through(tony, local(25, 5, 45), local(26, 5, 45))
    counts = {a: ran.count(a) for a in set(ran)}
    assert counts["news"] == 3 and counts["goals"] == 1 and counts["team_check"] == 3
    assert counts["journal"] == 2 and counts["post"] == 2 and counts["reflection"] >= 2

    # the same day again (a second clock, a retried tick): nothing runs twice
    assert await live_through(tony, local(25, 5, 45), local(26, 5, 45), step_min=60) == []

    log = await runs(runtime)
    assert not [r for r in log if r.status == "failed"], [r.output for r in log if r.status == "failed"]
    # what was due (long) before troupe first started is logged as skipped, not run late
    assert all(r.slot < local(25, 5, 30) for r in log if r.status == "skipped")
    slots = [(r.activity, r.slot) for r in log if r.slot is not None]
    assert len(slots) == len(set(slots))

    news_runs = sorted((r for r in log if r.activity == "news" and r.status == "completed"), key=lambda r: r.slot)
    first = news_runs[0].output
    # scored against Tony's focus areas, the blocked topic skipped, the take written by the model
    assert "My take on" in first and "Celebrity gossip" not in first
    # the feeds that are down or malformed are reported, and the others still read
    assert "/down" in first and "malformed" in first
    titles = [re.findall(r"^- (.+?) \(http", r.output, re.M) for r in news_runs]
    assert all(titles[0]) and not set(titles[0]) & set(titles[1])  # nothing read twice

    async with httpx.AsyncClient() as http:
        app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
        with serving(app) as url:
            schedules = (await http.get(f"{url}/api/schedules", params={"persona": "tony"})).json()["schedules"]
            news = next(s for s in schedules if s["activity"] == "news")
            assert news["id"] == "tony.news" and news["cron_expression"] == "0 6,12,18 * * *"
            assert news["cron_human"] == "At 06:00, 12:00 and 18:00 (America/Los_Angeles)"
            assert news["last_triggered_at"].startswith("2026-11-26T02:") and news["is_paused"] is False
            assert {s["persona"] for s in (await http.get(f"{url}/api/schedules")).json()["schedules"]} == {
                p.name for p in runtime.catalog.executives()
            }

            executions = (await http.get(f"{url}/api/schedules/tony.news/executions")).json()["executions"]
            assert [e["status"] for e in executions] == ["completed"] * 3 + ["skipped"]
            process = (await http.get(f"{url}/api/processes/{executions[0]['process_id']}")).json()
            assert process["name"] == "life:news" and process["status"] == "completed"
            loop_process = (await http.get(f"{url}/api/processes/{process['parent_id']}")).json()
            assert loop_process["kind"] == "life_loop" and loop_process["agent"] == "Tony"

            day = (await http.get(f"{url}/api/personas/tony/journal", params={"date": "2026-11-25"})).json()
            assert len(day["entries"]) == 2 and day["markdown"].startswith("# Tony's journal, 2026-11-25")
            assert "**18:00** Long day." in day["markdown"]

            goals = (await http.get(f"{url}/api/personas/tony/goals")).json()
            assert goals["persona"] == "Tony" and goals["flags"]

            # posts reached Slack; the social webhook was down, so they wait, kept, for their retry
            posted = (await http.get(f"{url}/api/posts", params={"persona": "Tony"})).json()["posts"]
            assert len(posted) == 2 and all(p["status"] == "pending" for p in posted)
            assert all(p["delivered_to"] == ["slack"] and p["pending"] == ["webhook"] for p in posted)
            assert [m.channel for m in slack.fake.posted] == ["#company-life", "#company-life"]
            assert all(len(p["text"]) <= 280 for p in posted)
            social.down = False
            assert await tony.deliver_pending.remote() == 0
            posted = (await http.get(f"{url}/api/posts", params={"persona": "Tony"})).json()["posts"]
            assert all(p["status"] == "delivered" for p in posted)
            assert [body["persona"] for _, body in social.received] == ["Tony", "Tony"]

            metrics = (await http.get(f"{url}/metrics")).text
            assert 'troupe_life_activity_runs{activity="news",persona="Tony",status="completed"} 3.0' in metrics

            # what Tony read reaches his conversations
            caller = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
            reply = await caller.chat.completions.create(
                model="tony", messages=[{"role": "user", "content": "What have you been reading?"}]
            )
            answer = reply.choices[0].message.content or ""
            latest = [t for run in titles for t in run][-1]
            assert answer.startswith("Lately I read") and latest in answer


async def test_operators_pause_and_retime_and_bad_input_is_refused(
    start_runtime: Any, tmp_path: Path, outside: Any
) -> None:
    goals_dir = tmp_path / "goals"
    goals_dir.mkdir()
    (goals_dir / "tony.yaml").write_text(
        "mission: Ship.\nquarter: 2026-Q4\nobjectives:\n  - title: X\n    key_results: oops\n"
    )
    runtime = start_runtime(life_settings(tmp_path, outside, goals_dir=goals_dir))
    tony = life_loop(runtime)
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    async with httpx.AsyncClient() as http:
        with serving(app) as url:
            bad = await http.patch(f"{url}/api/schedules/tony.news", json={"cron_expression": "0 25 * * *"})
            assert bad.status_code == 422 and "cron" in bad.json()["error"]["message"]
            assert (await http.patch(f"{url}/api/schedules/tony.news", json={"is_paused": "soon"})).status_code == 422
            assert (await http.patch(f"{url}/api/schedules/tony.nap", json={"is_paused": True})).status_code == 404
            assert (await http.patch(f"{url}/api/schedules/priya.news", json={"is_paused": True})).status_code == 404

            paused = await http.patch(f"{url}/api/schedules/tony.news", json={"is_paused": True})
            assert paused.status_code == 200 and paused.json()["is_paused"] and paused.json()["next_trigger_at"] is None
            retimed = await http.patch(f"{url}/api/schedules/tony.journal", json={"cron_expression": "30 7 * * 1-5"})
            assert retimed.json()["cron_expression"] == "30 7 * * 1-5"

            ran = await live_through(tony, local(25, 5, 45), local(25, 10, 30))
            assert "news" not in ran  # paused
            assert ran.count("journal") == 1  # 07:30 on a Wednesday, the new time
            goals = [r for r in await runs(runtime, activity="goals")]
            # the malformed goals file fails the run with the file and field named; the loop lives on
            assert goals[0].status == "failed" and "tony.yaml" in goals[0].output and "key_results" in goals[0].output
            assert "team_check" in ran

            missing = await http.post(f"{url}/internal/life/trigger")
            assert missing.status_code == 400 and missing.json()["activities"][0] == "news"
            result = await http.post(f"{url}/internal/life/trigger", params={"activity": "post", "persona": "tony"})
            assert result.json()["result"].startswith("Posted: Boring systems")
            unknown = await http.post(f"{url}/internal/life/trigger", params={"activity": "nap", "persona": "tony"})
            assert unknown.status_code == 400
            bad_date = await http.get(f"{url}/api/personas/tony/journal", params={"date": "yesterday"})
            assert bad_date.status_code == 400

    # the operator's changes outlive a restart of the life loop
    ray.kill(tony, no_restart=True)

    async def restarted() -> Any:
        try:
            handle = life_loop(runtime)
            return next(s for s in await handle.schedules.remote() if s["activity"] == "news")["is_paused"]
        except Exception:
            return False

    assert await wait_for(restarted, within=60)


async def test_kill_and_restart_never_run_a_slot_twice(start_runtime: Any, tmp_path: Path) -> None:
    script = write_script(tmp_path / "script.json", ["Written by the persona."])
    settings = make_settings(tmp_path, fake_script=script, news_sources="http://127.0.0.1:9/none")
    runtime = start_runtime(settings)
    tony = life_loop(runtime)
    assert await tony.tick.remote(local(25, 6, 5)) == ["news"]  # fails (the feed is unreachable) but runs once

    ray.kill(tony, no_restart=True)
    tony = await life_loop_back(runtime)
    assert await tony.tick.remote(local(25, 6, 10)) == []

    runtime.stop()  # troupe goes down at 06:10 and comes back at 09:10 and again at 12:40
    runtime = start_runtime(make_settings(tmp_path, fake_script=script, news_sources="http://127.0.0.1:9/none"))
    tony = life_loop(runtime)
    assert await tony.tick.remote(local(25, 9, 10)) == ["goals"]  # 09:00, ten minutes late: within grace
    assert await tony.tick.remote(local(25, 9, 12)) == []
    ran = await tony.tick.remote(local(25, 12, 40))  # news at 12:00 and team check at 10:00: too late
    assert "news" not in ran
    log = sorted(await runs(runtime, activity="news"), key=lambda r: r.slot)
    assert [(r.slot, r.status) for r in log] == [(local(25, 6), "failed"), (local(25, 12), "skipped")]
    assert "no source could be read" in log[0].output and "Missed while troupe was down" in log[1].output


async def test_a_simulated_clock_lives_through_hours_in_seconds(
    start_runtime: Any, tmp_path: Path, outside: Any
) -> None:
    runtime = start_runtime(
        life_settings(
            tmp_path,
            outside,
            life_loops_enabled=True,
            life_clock_start=local(25, 5, 55),
            life_clock_speed=3600.0,  # an hour a second, from when troupe starts
            life_tick_s=0.5,
            life_grace_s=7200,
        )
    )

    async def lived() -> Any:
        news = [r for r in await runs(runtime, activity="news") if r.status == "completed"]
        return news if len(news) >= 2 else None

    news = await wait_for(lived, within=90)
    # two news slots six simulated hours apart, on their hours, each run once, in real seconds
    assert all(r.slot.minute == 0 and r.slot.hour in (14, 20, 2) for r in news)  # 06, 12, 18 Pacific in UTC
    assert len({r.slot for r in news}) == len(news)
    assert (await runs(runtime, "Maya", "news")) != []  # every executive lives, not just Tony

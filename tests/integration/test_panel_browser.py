"""The control panel in a real headless Chromium (Debian's), against a troupe with 200 conversations and a
day of simulated life: every view stays bounded, each chart draws what /api/series counts, lists page
through their totals, a conversation's number shows only through an audited reveal, a schedule paused in
the panel is paused in the API, and a new completion appears without a reload. Screenshots of each view
are saved under artifacts/panel/."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.integration.conftest import make_settings
from troupe.app import Gateway, create_app
from troupe.store import Store
from troupe.testing.loopback import serving
from troupe.testing.seed import Seeded, seed_day

KEY = "operator-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef0123"
PLATFORM = "platform-key-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "panel"
VIEWPORT = {"width": 1400, "height": 900}
WAIT = 20_000

# Every element taller than the viewport must scroll on its own: only the document, the page's main area
# and the current view (a column of fixed sections) may be taller, and the page scroll takes them.
UNBOUNDED = """() => {
  const limit = window.innerHeight;
  const free = new Set([document.documentElement, document.body, document.querySelector("main"),
                        document.querySelector(".view.on")]);
  const found = [];
  for (const el of document.querySelectorAll("body *")) {
    if (free.has(el) || el.offsetParent === null) continue;
    const height = el.getBoundingClientRect().height;
    if (height <= limit) continue;
    const style = getComputedStyle(el);
    const scrolls = ["auto", "scroll", "hidden"].includes(style.overflowY);
    if (!scrolls) found.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ${Math.round(height)}px`);
  }
  return found;
}"""


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def run_apart(work: Any) -> Any:
    """Run a coroutine to its end on a thread of its own: Playwright's sync API keeps an event loop
    running on the test's thread, where asyncio.run may not start another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def with_store(runtime: Any, work: Any) -> Any:
    store = await Store.open(runtime.settings.resolved_database_url, migrate=False)
    try:
        return await work(store)
    finally:
        await store.close()


def door_of(runtime: Any) -> Any:
    keys = f"ops:operator:{KEY}, root:admin:{ADMIN}, vapi:platform:{PLATFORM}"
    settings = runtime.settings.model_copy(update={"api_keys": SecretStr(keys)})
    return create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))


def api(url: str, path: str, key: str = KEY, **params: Any) -> Any:
    answer = httpx.get(f"{url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, (path, answer.text)
    return answer.json()


def snap(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def assert_bounded(page: Any, view: str) -> None:
    unbounded = page.evaluate(UNBOUNDED)
    assert not unbounded, f"{view}: taller than the viewport with no scroll of its own: {unbounded}"


def open_view(page: Any, view: str) -> None:
    page.click(f"#tabs a[data-view='{view}']")
    page.wait_for_selector(f"#view-{view}.on", timeout=WAIT)


def test_the_panel_over_a_day_of_life(start_runtime: Any, browser: Any, tmp_path: Path) -> None:
    runtime = start_runtime(make_settings(tmp_path, insecure=False, rate_limit_per_minute=0))
    seeded: Seeded = run_apart(with_store(runtime, lambda store: seed_day(store, runtime.catalog, sessions=200)))
    assert len(seeded.session_ids) == 200
    with serving(door_of(runtime)) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{url}/#key={KEY}")  # the banner's URL: the page signs in and drops the key from the URL
        page.wait_for_selector(".persona[data-persona='Riley']", timeout=WAIT)
        assert KEY not in page.url and not page.evaluate("document.cookie")  # the cookie is HttpOnly
        assert KEY not in page.evaluate("JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")
        assert page.locator(".persona").count() == 5
        assert page.locator("#tabs a[data-view='audit']").count() == 0  # an operator's key: no audit log
        page.wait_for_selector("#live.on", timeout=WAIT)

        # ---- charts: each draws what /api/series counts, over the day the seed wrote
        page.select_option("#window", "day")
        page.wait_for_function("() => window.troupeCharts.turns && window.troupeCharts.turns.data[0].length === 144",
                               timeout=WAIT)  # fmt: skip
        series = api(url, "/api/series", window="day")
        since = series["points"][0]["t"]
        in_window = run_apart(with_store(runtime, lambda s: s.turns_since(0, since=_parse(since), limit=10_000)))
        assert series["totals"]["turns"] == len(in_window) > 0.9 * seeded.turns  # the store's turns, counted
        drawn = page.evaluate("""() => Object.fromEntries(Object.entries(window.troupeCharts).map(
            ([name, chart]) => [name, {total: chart.troupe.total, series: chart.troupe.series}]))""")
        step = series["step_s"] / 60
        assert drawn["turns"]["total"] == series["totals"]["turns"]
        assert round(sum(drawn["turns"]["series"][0]["values"]) * step) == series["totals"]["turns"]
        assert drawn["errors"]["total"] == sum(series["totals"]["errors"].values()) == sum(seeded.errors.values())
        by_code = {s["label"]: sum(s["values"]) for s in drawn["errors"]["series"]}
        assert by_code == series["totals"]["errors"]
        assert float(drawn["cost"]["total"]) == pytest.approx(sum(series["totals"]["cost_usd"].values()), abs=1e-5)
        cost_drawn = {s["label"]: sum(v or 0 for v in s["values"]) for s in drawn["cost"]["series"]}
        assert cost_drawn == pytest.approx(series["totals"]["cost_usd"], abs=1e-5)
        p50 = {s["label"]: s["values"] for s in drawn["ttft"]["series"]}
        for persona in series["personas"]:
            assert p50[f"{persona} p50"] == [p["ttft_p50_ms"][persona] for p in series["points"]]
        assert drawn["restarts"]["total"] == sum(p["restarts"] for p in series["points"])
        budget = page.locator("#budgets [data-budget='Tony']").inner_text()
        assert f"of ${series['budgets']['Tony']:.2f}" in budget
        assert_bounded(page, "overview")
        snap(page, "overview")

        # ---- conversations: a page of 20 of 200, the next page, a filter, one conversation and its reveal
        open_view(page, "conversations")
        page.wait_for_selector("[data-pager='conversations'] :text('1–20 of 200')", timeout=WAIT)
        assert page.locator("#conversations tbody tr").count() == 20
        page.click("[data-pager='conversations'] button[data-move='1']")
        page.wait_for_selector("[data-pager='conversations'] :text('21–40 of 200')", timeout=WAIT)
        page.select_option("#conversation-filters select[name='persona']", "Maya")
        page.click("#conversation-filters button")
        maya = api(url, "/api/conversations", persona="Maya", limit=1)["total"]
        page.wait_for_selector(f"[data-pager='conversations'] :text('of {maya}')", timeout=WAIT)
        assert all("Maya" in row for row in page.locator("#conversations tbody tr").all_inner_texts())
        phone_ids = [c for c in seeded.caller_ids if c.startswith("+")]
        assert not any(c in page.content() for c in phone_ids)  # every number on the page is masked
        page.click("#conversations tbody tr.pick >> nth=0")
        page.wait_for_selector("#conversation .turn", timeout=WAIT)
        assert "first token" in page.locator("#conversation .turn >> nth=0").inner_text()
        assert_bounded(page, "conversations")
        snap(page, "conversation")
        # the reveal of a number: shown on the page, and in the audit log under the key's name
        page.fill("#conversation-filters input[name='caller']", phone_ids[0])  # the whole number finds them
        page.select_option("#conversation-filters select[name='persona']", "")
        page.click("#conversation-filters button")
        theirs = api(url, "/api/conversations", caller=phone_ids[0], limit=1)["total"]
        page.wait_for_selector(f"[data-pager='conversations'] :text('1–{min(theirs, 20)} of {theirs}')", timeout=WAIT)
        page.click("#conversations tbody tr.pick >> nth=0")
        page.wait_for_selector("#reveal", timeout=WAIT)
        page.click("#reveal")
        page.wait_for_selector(f"#conversation-caller:text('{phone_ids[0]}')", timeout=WAIT)
        audit = api(url, "/api/audit", ADMIN)
        assert audit["items"][0]["action"] == "reveal" and audit["items"][0]["actor"] == "ops"

        # ---- processes: by node and kind, and a page of them
        open_view(page, "processes")
        page.wait_for_selector("#nodes .node:has-text('head') [data-kind='persona']", timeout=WAIT)
        assert "5" in page.locator("#nodes [data-kind='persona']").inner_text()
        assert_bounded(page, "processes")
        snap(page, "processes")

        # ---- life: a schedule paused and re-timed in the panel is so in the API; the day's runs and posts
        open_view(page, "life")
        page.select_option("#life-persona", "Tony")
        row = "#schedules tr[data-schedule='tony.news']"
        page.wait_for_selector(f"{row} button[data-pause='pause']", timeout=WAIT)
        page.click(f"{row} button[data-pause='pause']")
        page.wait_for_selector(f"{row} [data-state]:text('paused')", timeout=WAIT)
        news = next(s for s in api(url, "/api/schedules", persona="Tony")["schedules"] if s["id"] == "tony.news")
        assert news["is_paused"] is True
        page.fill(f"{row} input[name='cron']", "15 7 * * *")
        page.click(f"{row} button[data-retime]")
        page.wait_for_selector(f"{row} input[value='15 7 * * *']", timeout=WAIT)
        news = next(s for s in api(url, "/api/schedules", persona="Tony")["schedules"] if s["id"] == "tony.news")
        assert news["cron_expression"] == "15 7 * * *"
        runs = sum(seeded.life_runs["Tony"].values())
        page.wait_for_selector(f"[data-total='runs']:text('{runs} in all')", timeout=WAIT)
        posts = api(url, "/api/posts", persona="Tony", offset=0)["total"]
        page.wait_for_selector(f"[data-total='posts']:text('{posts} in all')", timeout=WAIT)
        assert page.locator("#journal-day option").count() == len(seeded.journal_days["Tony"])
        page.wait_for_selector("#journal div", timeout=WAIT)
        page.wait_for_selector("#goals li", timeout=WAIT)
        assert_bounded(page, "life")
        snap(page, "life")

        # ---- events by group (pool churn its own), then a new completion appears live, with no reload
        open_view(page, "events")
        page.wait_for_selector("#groups .chip[data-group='pool']", timeout=WAIT)
        assert "on" not in (page.get_attribute("#groups .chip[data-group='pool']", "class") or "")
        assert_bounded(page, "events")
        snap(page, "events")
        open_view(page, "conversations")
        page.fill("#conversation-filters input[name='caller']", "")
        page.click("#conversation-filters button")
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "jordan", "messages": [{"role": "user", "content": "How is cash?"}]},
            headers={"Authorization": f"Bearer {PLATFORM}", "X-Vapi-Caller-Phone": "+14155559999"},
            timeout=30,
        )
        assert reply.status_code == 200
        page.wait_for_selector("#sessions tbody tr:has-text('+1415•••9999')", timeout=WAIT)
        page.wait_for_selector("#conversations tbody tr:has-text('+1415•••9999')", timeout=WAIT)
        assert "+14155559999" not in page.content()
        page.wait_for_selector("#feed li:has-text('session.started')", state="attached", timeout=WAIT)
        open_view(page, "overview")
        page.wait_for_selector(".persona[data-persona='Jordan'] [data-count='sessions']:text('1')", timeout=WAIT)
        snap(page, "overview-live")


def _parse(stamp: str) -> Any:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def seed_memories(runtime: Any, phone: str) -> None:
    store = await Store.open(runtime.settings.resolved_database_url, migrate=False)
    try:
        old = await store.add_memory("Tony", phone, "Drives a Volvo", kind="fact", source="call:one")
        await store.add_memory("Tony", phone, "Drives a Tesla now", kind="fact", source="call:two", supersedes=old.id)
        await store.add_memory("Tony", phone, "Talked about road trips", kind="summary", channel="voice")
    finally:
        await store.close()


async def memories_of(runtime: Any, phone: str) -> list[Any]:
    store = await Store.open(runtime.settings.resolved_database_url, migrate=False)
    try:
        return await store.memories_of(None, phone)
    finally:
        await store.close()


def test_panel_shows_memory_and_forgets_a_caller(start_runtime: Any, browser: Any, tmp_path: Path) -> None:
    """A persona's card shows its memory by layer and its newest memories; the caller box shows what troupe
    knows of a person, masked, with the correction's history, and forgets them after a confirm."""
    runtime = start_runtime(make_settings(tmp_path))
    phone = "+14155550123"
    run_apart(seed_memories(runtime, phone))
    with serving(door_of(runtime)) as url:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{url}/#key={KEY}")
        card = ".persona[data-persona='Tony'] .memory"
        page.wait_for_selector(f"{card} [data-layer='profile']:has-text('profile 1')", timeout=WAIT)
        assert "episode 1" in page.locator(card).inner_text()
        assert page.locator(f"{card} li").all_inner_texts()[0].endswith("Talked about road trips")
        assert page.locator(f"{card} li s").inner_text() == "Drives a Volvo"  # superseded, shown struck out

        open_view(page, "memory")
        page.fill("#caller", phone)
        page.click("#caller-box button")
        page.wait_for_selector("#callerview :text('+1415•••0123')", timeout=WAIT)
        view = page.locator("#callerview").inner_text()
        assert phone not in view and phone not in page.content()  # masked, and the box is cleared
        assert "Drives a Tesla now" in view and "call:two" in view
        assert page.locator("#callerview s").inner_text() == "Drives a Volvo"  # the corrected fact, struck out
        snap(page, "memory")

        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#forget")
        page.wait_for_selector("#forgotten:has-text('3 memories')", timeout=WAIT)
        assert run_apart(memories_of(runtime, phone)) == []
        open_view(page, "overview")
        page.wait_for_selector(f"{card} [data-layer='profile']:has-text('profile 0')", timeout=WAIT)
        page.wait_for_selector("#feed li:has-text('caller.forgotten')", timeout=WAIT)

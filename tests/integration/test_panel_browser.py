"""The control panel in a real headless Chromium (Debian's): it loads, a completion made while it is open
shows up in the process list without a reload, and it shows and forgets what troupe remembers."""

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

KEY = "operator-key-0123456789abcdef"
PLATFORM = "platform-key-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def test_panel_shows_a_new_completion_live(start_runtime: Any, browser: Any, tmp_path: Path) -> None:
    runtime = start_runtime(make_settings(tmp_path))
    settings = runtime.settings.model_copy(
        update={"api_keys": SecretStr(f"ops:operator:{KEY}, vapi:platform:{PLATFORM}")}
    )
    app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        page = browser.new_page()
        page.goto(f"{url}/#key={KEY}")  # the banner's URL: the page signs in and drops the key from the URL
        page.wait_for_selector(".persona[data-persona='Riley']", timeout=20_000)
        assert KEY not in page.url and not page.evaluate("document.cookie")  # the cookie is HttpOnly
        assert KEY not in page.evaluate("JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")
        assert page.locator(".persona").count() == 5
        page.wait_for_selector("#live.on", timeout=20_000)
        before = page.locator("#processes tbody tr").count()

        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "jordan", "messages": [{"role": "user", "content": "How is cash?"}]},
            headers={"Authorization": f"Bearer {PLATFORM}", "X-Vapi-Caller-Phone": "+14155559999"},
            timeout=30,
        )
        assert reply.status_code == 200
        session = next(p for p in httpx.get(f"{url}/api/processes", params={"kind": "session", "agent": "Jordan"},
                                            headers={"Authorization": f"Bearer {KEY}"}).json())  # fmt: skip
        # no reload: the event stream tells the page, which refetches
        page.wait_for_selector(f"#processes tr[data-id='{session['id']}']:has-text('Jordan')", timeout=20_000)
        row = page.locator(f"#processes tr[data-id='{session['id']}']").inner_text()
        assert "Jordan" in row and "running" in row
        page.wait_for_selector("#feed li:has-text('session.started')", timeout=20_000)
        # the feed and the sessions table refetch independently: wait for the table's own refetch
        page.wait_for_selector("#sessions :text('+14155559999')", timeout=20_000)
        assert "+14155559999" in page.locator("#sessions").inner_text()
        assert page.locator("#processes tbody tr").count() >= before
        page.screenshot(path=str(tmp_path / "panel.png"), full_page=True)


def run_apart(work: Any) -> Any:
    """Run a coroutine to its end on a thread of its own: Playwright's sync API keeps an event loop
    running on the test's thread, where asyncio.run may not start another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


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
    settings = runtime.settings.model_copy(update={"api_keys": SecretStr(f"ops:operator:{KEY}")})
    app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    with serving(app) as url:
        page = browser.new_page()
        page.goto(f"{url}/#key={KEY}")
        card = ".persona[data-persona='Tony'] .memory"
        page.wait_for_selector(f"{card} [data-layer='profile']:has-text('profile 1')", timeout=20_000)
        assert "episode 1" in page.locator(card).inner_text()
        assert page.locator(f"{card} li").all_inner_texts()[0].endswith("Talked about road trips")
        assert page.locator(f"{card} li s").inner_text() == "Drives a Volvo"  # superseded, shown struck out

        page.fill("#caller", phone)
        page.click("#lookup button")
        page.wait_for_selector("#callerview :text('+1415•••0123')", timeout=20_000)
        view = page.locator("#callerview").inner_text()
        assert phone not in view and phone not in page.content()  # masked, and the box is cleared
        assert "Drives a Tesla now" in view and "call:two" in view
        assert page.locator("#callerview s").inner_text() == "Drives a Volvo"  # the corrected fact, struck out

        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#forget")
        page.wait_for_selector("#forgotten:has-text('3 memories')", timeout=20_000)
        assert run_apart(memories_of(runtime, phone)) == []
        page.wait_for_selector(f"{card} [data-layer='profile']:has-text('profile 0')", timeout=20_000)
        page.wait_for_selector("#feed li:has-text('caller.forgotten')", timeout=20_000)

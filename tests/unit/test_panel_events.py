"""The control panel's event stream (sse-starlette) on loopback, fed by a stand-in orchestrator: the wire
format the panel's reader parses, resuming after Last-Event-ID, keep-alive pings while nothing happens, and
the stream's polling stopped once the client goes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from troupe.control_panel.api import event_stream
from troupe.testing.loopback import serving


class Events:
    """The orchestrator's `events_since` as the route calls it (`.remote(cursor)`), counting the polls."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.polls = 0
        self.events_since = self

    async def remote(self, cursor: int) -> list[dict[str, Any]]:
        self.polls += 1
        await asyncio.sleep(0)
        return [item for item in self.items if item["seq"] > cursor]


EVENTS = [
    {"seq": 1, "type": "session.started", "at": "2026-01-01T00:00:00Z", "agent": "Riley", "caller_id": "+14155550100"},
    {"seq": 2, "type": "process.failed", "at": "2026-01-01T00:00:01Z", "error": "line one\nline two"},
]


@pytest.fixture
def panel() -> Iterator[tuple[str, Events]]:
    orchestrator = Events(list(EVENTS))
    app = FastAPI()

    @app.get("/events")
    async def events(request: Request, since: int = 0, ping: float = 15.0) -> Any:
        last = request.headers.get("last-event-id")
        return event_stream(orchestrator, int(last) if last and last.isdigit() else since, ping_s=ping)

    with serving(app) as url:
        yield url, orchestrator


def read(url: str, until: str, *, headers: dict[str, str] | None = None, timeout_s: float = 10) -> str:
    """The stream's raw text up to and including the first block containing `until`."""
    text = ""
    deadline = time.monotonic() + timeout_s
    with httpx.stream("GET", url, headers=headers, timeout=timeout_s) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_text():
            text += chunk
            if (until in text and text.endswith("\n\n")) or time.monotonic() > deadline:
                return text
    return text


def blocks(text: str) -> list[dict[str, str]]:
    """What the panel's reader does: blocks split on a blank line, fields on 'name: value'."""
    parsed = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in filter(None, block.split("\n")):
            name, _, value = line.partition(": ")
            fields[name] = fields.get(name, "") + value
        if fields:
            parsed.append(fields)
    return parsed


def test_events_arrive_in_the_format_the_panel_reads(panel: tuple[str, Events]) -> None:
    url, _ = panel
    text = read(f"{url}/events", until="process.failed")
    assert "\r" not in text  # the panel splits on "\n\n"
    first, *events = blocks(text)
    assert first == {"retry": "2000"}
    assert [(e["id"], e["event"]) for e in events] == [("1", "session.started"), ("2", "process.failed")]
    # a newline inside an event stays inside its JSON; the caller's number is masked
    assert [json.loads(e["data"]) for e in events] == [{**EVENTS[0], "caller_id": "+1415•••0100"}, EVENTS[1]]


def test_a_reconnecting_client_resumes_after_its_last_event_id(panel: tuple[str, Events]) -> None:
    url, _ = panel
    resumed = blocks(read(f"{url}/events", until="process.failed", headers={"Last-Event-ID": "1"}))
    assert [e.get("id") for e in resumed if "data" in e] == ["2"]
    since = blocks(read(f"{url}/events?since=1", until="process.failed"))
    assert [e.get("id") for e in since if "data" in e] == ["2"]


def test_an_idle_stream_sends_keep_alive_comments(panel: tuple[str, Events]) -> None:
    url, orchestrator = panel
    orchestrator.items.clear()
    text = read(f"{url}/events?ping=0.3", until=": ping")
    assert ": ping" in text and "data:" not in text  # a comment, which the panel's reader skips


def test_the_stream_stops_polling_when_the_client_goes(panel: tuple[str, Events]) -> None:
    url, orchestrator = panel
    read(f"{url}/events", until="process.failed")  # then the client closes the connection
    time.sleep(1.5)  # sse-starlette notices the disconnect and cancels the stream
    settled = orchestrator.polls
    time.sleep(1.5)
    assert orchestrator.polls == settled

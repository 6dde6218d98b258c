"""How long the Slack door takes to acknowledge a signed event (Slack's deadline is 3 s), without Ray:
the door under uvicorn on loopback, a stand-in session client, replies posted to the fake Slack server.
Run: .venv/bin/python bench/slack_ack.py [--events 40]. bench/platform_latency.py measures it
with a running troupe behind the door."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from troupe.app import Gateway, create_app
from troupe.config.settings import Settings
from troupe.core.messages import Delta, TurnEvent
from troupe.core.persona_file import load_personas
from troupe.integrations.slack import sign
from troupe.testing.fake_slack import FakeSlackServer
from troupe.testing.loopback import serving

SECRET = "bench-secret"


class InstantSessions:
    """Answers every turn at once, so the figure is the door's own acknowledgement time."""

    async def turn(self, request: Any) -> AsyncIterator[TurnEvent]:
        yield Delta(text="ok")

    def forget(self, caller_id: str, persona: str) -> None:
        pass


def event(n: int) -> bytes:
    ts = f"{int(time.time())}.{n:06d}"
    body = {"type": "event_callback", "team_id": "T1", "event_id": f"Ev{time.time_ns()}",
            "event": {"type": "app_mention", "user": "U1", "text": "maya: hi", "ts": ts, "channel": "C1"}}  # fmt: skip
    return json.dumps(body).encode()


def post(client: httpx.Client, url: str, raw: bytes) -> float:
    stamp = str(int(time.time()))
    headers = {"content-type": "application/json", "x-slack-request-timestamp": stamp,
               "x-slack-signature": sign(SECRET, raw, stamp)}  # fmt: skip
    began = time.perf_counter()
    answer = client.post(f"{url}/slack/events", content=raw, headers=headers)
    took = time.perf_counter() - began
    assert answer.status_code == 200, answer.text
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=40)
    args = parser.parse_args()
    with FakeSlackServer() as slack, tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), model_backend="fake", slack_signing_secret=SecretStr(SECRET),
                            slack_bot_token=SecretStr("xoxb-bench"), slack_api_base_url=slack.base_url)  # fmt: skip
        gateway = Gateway(settings, load_personas(), None, InstantSessions())  # type: ignore[arg-type]
        with serving(create_app(gateway)) as url:
            with httpx.Client() as warm:
                post(warm, url, event(0))  # builds the Bolt app and opens the store
            for label, keep_alive in (("new connection each", False), ("keep-alive", True)):
                took = []
                with httpx.Client() as shared:
                    for n in range(args.events):
                        if keep_alive:
                            took.append(post(shared, url, event(n + 1)))
                        else:
                            with httpx.Client() as fresh:
                                took.append(post(fresh, url, event(n + 1)))
                took.sort()
                p90 = took[int(len(took) * 0.9) - 1]
                print(f"{label}: median {statistics.median(took) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
                      f"max {took[-1] * 1000:.1f} ms over {len(took)} events")  # fmt: skip
            replies = slack.fake.wait_for_posts(2 * args.events + 1, timeout_s=30)
            print(f"replies posted: {len(replies)}")


if __name__ == "__main__":
    main()

"""How fast troupe answers the platforms, with a running troupe (real Ray, the scripted fake model)
behind the door on loopback: VAPI's assistant-request (VAPI waits 7.5 s) and its custom LLM's first
content chunk, ElevenLabs' custom LLM to its first speakable piece beside the plain completions door's
first token (same run, a ratio), and Slack's acknowledgement of signed events while their turns run
behind (Slack waits 3 s). Prints medians, p90 and max.

Run: .venv/bin/python bench/platform_latency.py [--requests 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from pydantic import SecretStr

from troupe.app import Gateway, create_app
from troupe.config.settings import Settings
from troupe.integrations.slack import sign
from troupe.runtime import Runtime
from troupe.testing.fake_slack import FakeSlackServer
from troupe.testing.loopback import serving

VAPI_SECRET = "bench-vapi-secret"
SLACK_SECRET = "bench-slack-secret"


def report(label: str, took: list[float], deadline_s: float | None = None) -> float:
    took = sorted(took)
    median = statistics.median(took)
    p90 = took[max(0, int(len(took) * 0.9) - 1)]
    limit = f" (deadline {deadline_s:g} s)" if deadline_s else ""
    print(f"{label}: median {median * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms "
          f"over {len(took)}{limit}")  # fmt: skip
    return median


def first_content(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    first = time.perf_counter()
    assert first is not None, "no content"
    return first - began


def timed_post(client: httpx.Client, url: str, **kwargs: Any) -> float:
    began = time.perf_counter()
    answer = client.post(url, **kwargs)
    took = time.perf_counter() - began
    assert answer.status_code == 200, answer.text
    return took


def slack_event(n: int, thread: str) -> tuple[bytes, dict[str, str]]:
    ts = f"{int(time.time())}.{n:06d}"
    body = {"type": "event_callback", "team_id": "T1", "event_id": f"Ev{time.time_ns()}",
            "event": {"type": "app_mention", "user": "U1", "text": f"maya: hi {n}", "ts": ts, "channel": "C1",
                      "thread_ts": thread}}  # fmt: skip
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()))
    headers = {"content-type": "application/json", "x-slack-request-timestamp": stamp,
               "x-slack-signature": sign(SLACK_SECRET, raw, stamp)}  # fmt: skip
    return raw, headers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    n = parser.parse_args().requests
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with FakeSlackServer() as slack, tempfile.TemporaryDirectory() as data:
        settings = Settings(
            data_dir=Path(data), model_backend="fake", session_pool_size=1, life_loops_enabled=False,
            rate_limit_per_minute=0, namespace="troupe-bench-platforms", insecure=True,
            vapi_secret=SecretStr(VAPI_SECRET), public_url="https://troupe.example.com",
            slack_signing_secret=SecretStr(SLACK_SECRET), slack_bot_token=SecretStr("xoxb-bench"),
            slack_api_base_url=slack.base_url,
        )  # fmt: skip
        runtime = Runtime.start(settings)
        try:
            app = create_app(Gateway(settings, runtime.catalog, runtime.orchestrator, runtime.client()))
            with serving(app) as url, httpx.Client(timeout=30) as client:
                vapi = {"X-Vapi-Secret": VAPI_SECRET}
                assistant = {"message": {"type": "assistant-request", "call": {"id": "call-b", "customer": {
                    "number": "+14155550199"}}, "metadata": {"persona": "maya"}}}  # fmt: skip
                timed_post(client, f"{url}/vapi/events", json=assistant, headers=vapi)  # warm
                report("VAPI assistant-request", [
                    timed_post(client, f"{url}/vapi/events", json=assistant, headers=vapi) for _ in range(n)
                ], 7.5)  # fmt: skip

                def llm(caller: str, extra: dict[str, Any]) -> dict[str, Any]:
                    return {"model": "tony", "stream": True,
                            "messages": [{"role": "user", "content": "Quick question."}], "user": caller,
                            **extra}  # fmt: skip

                call = {"call": {"id": "call-b2", "customer": {"number": "+14155550198"}}}
                first_content(client, f"{url}/chat/completions", llm("+14155550198", call))  # warm the session
                report("VAPI custom LLM, first content chunk", [
                    first_content(client, f"{url}/chat/completions", llm("+14155550198", call)) for _ in range(n)
                ])  # fmt: skip

                same = llm("alice", {"user_id": "alice"})  # the same caller, and session, on both paths
                first_content(client, f"{url}/v1/elevenlabs-llm", same)
                speakable = report("ElevenLabs custom LLM, first speakable piece", [
                    first_content(client, f"{url}/v1/elevenlabs-llm", same) for _ in range(n)
                ])  # fmt: skip
                plain = report("plain /v1/chat/completions, first token", [
                    first_content(client, f"{url}/v1/chat/completions", same) for _ in range(n)
                ])  # fmt: skip
                print(f"speakable / plain first chunk: {speakable / plain:.2f}x")

                thread = f"{int(time.time())}.000000"
                took = []
                for i in range(n):
                    raw, headers = slack_event(i + 1, thread)
                    took.append(timed_post(client, f"{url}/slack/events", content=raw, headers=headers))
                report("Slack event to its 200, turns running behind", took, 3.0)
                print(f"Slack replies posted: {len(slack.fake.wait_for_posts(n, timeout_s=120))} of {n}")
        finally:
            runtime.stop()
            ray.shutdown()


if __name__ == "__main__":
    main()

"""A Slack Web API stand-in on loopback, for tests and benchmarks: `auth.test`, `chat.postMessage`,
`conversations.info` and `conversations.replies` in Slack's wire format, with failure modes and a record
of every message posted. Point a client at it with base_url=f"{server.base_url}/api/"."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from troupe.testing.loopback import LoopbackServer

BOT_USER_ID = "U0TROUPE"
BOT_ID = "B0TROUPE"
TEAM_ID = "T0FAKE"


@dataclass(frozen=True)
class Posted:
    """One chat.postMessage call as Slack received it."""

    token: str
    channel: str
    text: str
    thread_ts: str | None
    ts: str
    body: dict[str, Any]


@dataclass
class FakeSlack:
    """The state behind the server: known channels, injected failures, and what was posted."""

    channels: dict[str, str] = field(default_factory=dict)  # channel id -> name
    posted: list[Posted] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, token) for every call
    fail_posts: int = 0  # the next n chat.postMessage calls fail with fail_status
    fail_status: int = 500
    _seq: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def reset(self) -> None:
        with self._changed:
            self.posted.clear()
            self.calls.clear()
            self.fail_posts = 0
            self.fail_status = 500

    def fail_next_posts(self, count: int, status: int = 500) -> None:
        with self._changed:
            self.fail_posts, self.fail_status = count, status

    def wait_for_posts(self, count: int, timeout_s: float = 30.0) -> list[Posted]:
        """Block until at least `count` messages were posted (or the timeout passes); returns them all."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self.posted) < count and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
            return list(self.posted)

    def method_calls(self, method: str) -> int:
        with self._changed:
            return sum(1 for name, _ in self.calls if name == method)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/api/{method}", methods=["GET", "POST"])
        async def api(method: str, request: Request) -> JSONResponse:
            args = await _arguments(request)
            token = _token(request, args)
            with self._changed:
                self.calls.append((method, token))
            if not token:
                return JSONResponse({"ok": False, "error": "not_authed"})
            if not token.startswith("xoxb-"):
                return JSONResponse({"ok": False, "error": "invalid_auth"})
            handler = _METHODS.get(method)
            if handler is None:
                return JSONResponse({"ok": False, "error": "unknown_method"})
            return handler(self, token, args)

        return app

    # --- the methods

    def _auth_test(self, token: str, args: dict[str, Any]) -> JSONResponse:
        return JSONResponse(
            {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "troupe", "team_id": TEAM_ID,
             "user_id": BOT_USER_ID, "bot_id": BOT_ID}
        )  # fmt: skip

    def _post_message(self, token: str, args: dict[str, Any]) -> JSONResponse:
        with self._changed:
            if self.fail_posts > 0:
                self.fail_posts -= 1
                headers = {"Retry-After": "1"} if self.fail_status == 429 else None
                error = "ratelimited" if self.fail_status == 429 else "fatal_error"
                return JSONResponse({"ok": False, "error": error}, self.fail_status, headers=headers)
            channel, text = str(args.get("channel") or ""), str(args.get("text") or "")
            if not channel:
                return JSONResponse({"ok": False, "error": "channel_not_found"})
            if not text and not args.get("blocks"):
                return JSONResponse({"ok": False, "error": "no_text"})
            self._seq += 1
            ts = f"{int(time.time())}.{self._seq:06d}"
            thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
            self.posted.append(Posted(token, channel, text, thread_ts, ts, dict(args)))
            self._changed.notify_all()
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "text": text, "ts": ts}
        if thread_ts:
            message["thread_ts"] = thread_ts
        return JSONResponse({"ok": True, "channel": channel, "ts": ts, "message": message})

    def _conversations_info(self, token: str, args: dict[str, Any]) -> JSONResponse:
        channel = str(args.get("channel") or "")
        if channel.startswith("D"):
            return JSONResponse({"ok": True, "channel": {"id": channel, "is_im": True, "user": "U0SOMEONE"}})
        name = self.channels.get(channel)
        if name is None:
            return JSONResponse({"ok": False, "error": "channel_not_found"})
        info = {"id": channel, "name": name, "is_channel": True, "is_im": False, "is_member": True}
        return JSONResponse({"ok": True, "channel": info})

    def _conversations_replies(self, token: str, args: dict[str, Any]) -> JSONResponse:
        channel, thread = str(args.get("channel") or ""), str(args.get("ts") or "")
        with self._changed:
            found = [p for p in self.posted if p.channel == channel and p.thread_ts == thread]
        messages = [
            {"type": "message", "bot_id": BOT_ID, "text": p.text, "ts": p.ts, "thread_ts": thread} for p in found
        ]
        return JSONResponse({"ok": True, "messages": messages, "has_more": False})


_METHODS = {
    "auth.test": FakeSlack._auth_test,
    "chat.postMessage": FakeSlack._post_message,
    "conversations.info": FakeSlack._conversations_info,
    "conversations.replies": FakeSlack._conversations_replies,
}


async def _arguments(request: Request) -> dict[str, Any]:
    """Slack takes arguments as a query string, a form body or (for write methods) a JSON body."""
    args: dict[str, Any] = dict(request.query_params)
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        if isinstance(body, dict):
            args.update(body)
    elif kind.startswith("application/x-www-form-urlencoded"):
        args.update(parse_qsl((await request.body()).decode("utf-8", "replace")))
    return args


def _token(request: Request, args: dict[str, Any]) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return str(args.get("token") or "")


class FakeSlackServer(LoopbackServer):
    """Runs FakeSlack on loopback in a background thread (a context manager)."""

    label = "fake Slack server"

    def __init__(self, port: int | None = None) -> None:
        self.fake = FakeSlack()
        super().__init__(self.fake.app(), port)

    @property
    def base_url(self) -> str:
        """What SLACK_API_BASE_URL should be (slack_sdk appends the method name)."""
        return f"{self.root}/api/"

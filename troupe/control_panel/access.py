"""The door's outer layer, as plain ASGI (no per-chunk overhead on streams): bearer-key checks,
CORS on /api/*, body-size limits by Content-Length, and request metrics by route."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from troupe.config.settings import Settings
from troupe.control_panel.metrics import LATENCY, REQUESTS

PROTECTED = ("/v1/", "/chat/", "/api/", "/internal/")
OPEN = ("/health", "/ready")


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> tuple[bytes, int]:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode(), status


class Door:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = [k.encode() for k in settings.keys]
        # which door replica answered (operators reading a trace; tests of several replicas)
        self.replica = (b"x-troupe-replica", secrets.token_hex(4).encode())
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        self.cors = CORSMiddleware(
            app, allow_origins=origins, allow_methods=["GET", "POST", "PATCH", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip

    def _needs_key(self, path: str, method: str) -> bool:
        if not self.keys or method == "OPTIONS" or path in OPEN:
            return False
        if path == "/metrics":
            return not self.settings.metrics_public
        # the page at / is a static shell; every byte of data it shows comes from /api/* with the key
        return path.startswith(PROTECTED)

    def _authorised(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        # compare against every key, so timing does not say which one nearly matched
        return any([hmac.compare_digest(token.strip(), key) for key in self.keys])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        began = time.perf_counter()
        status_seen: list[int] = []

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.replica]}
                status_seen.append(message["status"])
                route = scope.get("route")
                label = getattr(route, "path", None) or ("unmatched" if message["status"] == 404 else path)
                REQUESTS.labels(label, method, str(message["status"])).inc()
                LATENCY.labels(label, method).observe(time.perf_counter() - began)
            await send(message)

        if self._needs_key(path, method) and not self._authorised(scope):
            body, status = _error(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                                  "invalid_api_key")  # fmt: skip
            await self._reply(send_wrapper, status, body, {"www-authenticate": "Bearer"})
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length and length.isdigit() and int(length) > self.settings.max_body_bytes:
            body, status = _error(413, f"Request body is {int(length)} bytes; the limit is "
                                  f"{self.settings.max_body_bytes}.", "request_too_large")  # fmt: skip
            await self._reply(send_wrapper, status, body)
            return
        target = self.cors if path.startswith("/api/") else self.app
        await target(scope, receive, send_wrapper)

    @staticmethod
    async def _reply(send: Any, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

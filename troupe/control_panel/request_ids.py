"""Tells the door which X-Request-ID a client sent and which one Ray Serve made up: Serve writes a fresh
id into every request that has none, and that id names no caller. This ASGI middleware runs before
Serve's own (Serve loads it from RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) and marks such requests."""

from __future__ import annotations

from typing import Any

MARK = b"x-troupe-request-id-generated"
IMPORT_PATH = "troupe.control_panel.request_ids:serve_middlewares"


class MarkGeneratedRequestId:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != MARK]  # a client's own: dropped
            if not any(k.lower() == b"x-request-id" for k, _ in headers):
                headers.append((MARK, b"1"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def serve_middlewares() -> list[Any]:
    from starlette.middleware import Middleware

    return [Middleware(MarkGeneratedRequestId)]

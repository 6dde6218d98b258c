"""VAPI's REST API on loopback, for tests: `POST /call` (create call) answered as VAPI answers it,
with a record of every call placed and every request. Failure modes: `fail_status` (down: no call placed),
`fail_after_create` (the call is placed, then a 5xx) and `stall_after_create_s` (the call is placed, then
the answer comes too late for the client: the response is lost)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from troupe.testing.loopback import LoopbackServer


class FakeVapiServer(LoopbackServer):
    label = "fake VAPI server"

    def __init__(self, *, api_key: str = "vapi-test-key", fail_status: int | None = None) -> None:
        self.api_key = api_key
        self.fail_status = fail_status
        self.fail_after_create: int | None = None
        self.stall_after_create_s = 0.0
        self.calls: list[dict[str, Any]] = []  # the calls VAPI placed: each one rang a phone
        self.attempts = 0
        self.idempotency_keys: list[str | None] = []  # per request; VAPI's API ignores them
        app = FastAPI()

        @app.post("/call")
        async def create_call(request: Request) -> Any:
            self.attempts += 1
            self.idempotency_keys.append(request.headers.get("idempotency-key"))
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"message": "Invalid Key.", "error": "Unauthorized", "statusCode": 401}, 401)
            if self.fail_status:
                return JSONResponse({"message": "unavailable", "statusCode": self.fail_status}, self.fail_status)
            body = await request.json()
            self.calls.append(body)
            if self.fail_after_create:
                status = self.fail_after_create
                return JSONResponse({"message": "Internal server error", "statusCode": status}, status)
            if self.stall_after_create_s:
                await asyncio.sleep(self.stall_after_create_s)
            return JSONResponse(
                {"id": secrets.token_hex(8), "status": "queued", "type": "outboundPhoneCall", **body}, 201
            )

        super().__init__(app)

    @property
    def base_url(self) -> str:
        return self.root

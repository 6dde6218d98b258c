"""VAPI's REST API on loopback, for tests: `POST /call` (create call) answered as VAPI answers it,
with a record of every call asked for; `fail_status` makes it act down."""

from __future__ import annotations

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
        self.calls: list[dict[str, Any]] = []
        self.attempts = 0
        app = FastAPI()

        @app.post("/call")
        async def create_call(request: Request) -> Any:
            self.attempts += 1
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"message": "Invalid Key.", "error": "Unauthorized", "statusCode": 401}, 401)
            if self.fail_status:
                return JSONResponse({"message": "unavailable", "statusCode": self.fail_status}, self.fail_status)
            body = await request.json()
            self.calls.append(body)
            return JSONResponse(
                {"id": secrets.token_hex(8), "status": "queued", "type": "outboundPhoneCall", **body}, 201
            )

        super().__init__(app)

    @property
    def base_url(self) -> str:
        return self.root

"""VAPI's REST API on loopback, for tests: `POST /call` (create call) answered as VAPI answers it,
with a record of every call asked for; `fail_status` makes it act down."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from troupe.testing.fake_openai import free_port


class FakeVapiServer:
    def __init__(self, *, api_key: str = "vapi-test-key", fail_status: int | None = None) -> None:
        self.api_key = api_key
        self.fail_status = fail_status
        self.calls: list[dict[str, Any]] = []
        self.attempts = 0
        self.port = free_port()
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

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeVapiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake VAPI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)

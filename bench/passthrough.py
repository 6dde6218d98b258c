"""A do-nothing FastAPI streaming pass-through to an upstream OpenAI-compatible server: the floor
that troupe's door is measured against (served by uvicorn, or deployed with Ray Serve)."""

from __future__ import annotations

import sys
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def build(upstream: str) -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(base_url=upstream, timeout=60)

    @app.post("/v1/chat/completions")
    async def relay(request: Request) -> Any:
        body = await request.body()

        async def stream() -> Any:
            async with client.stream("POST", "/chat/completions", content=body,
                                     headers={"content-type": "application/json"}) as response:  # fmt: skip
                async for chunk in response.aiter_raw():
                    yield chunk

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    import uvicorn

    upstream, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(build(upstream), host="127.0.0.1", port=port, log_level="warning")

"""A do-nothing FastAPI streaming pass-through to an upstream OpenAI-compatible server: the floor
that troupe's door is measured against, served by uvicorn or deployed with Ray Serve.

Run: passthrough.py UPSTREAM PORT [--serve [--serve-defaults]]
"""

# no `from __future__ import annotations`: on a Serve replica, FastAPI would not resolve `Request` in the
# by-value pickled handler and take it for a query parameter
import argparse
import os
import signal
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


def stop(*_: object) -> None:
    raise SystemExit(0)


def serve(upstream: str, port: int, defaults: bool) -> None:
    """Deploy the pass-through on Ray Serve and block until SIGTERM. Unless `defaults`, in the mode
    troupe's Serve door runs in (troupe/runtime.py serve_direct_ingress_env, troupe/app.py
    serve_with_ray): throughput-optimized, the replica answering on `port` itself, the proxy one over."""
    proxy_port = port
    if not defaults:
        # read when Serve's controller, proxy and replica start: before Ray starts, which they inherit
        os.environ.update({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
                           "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1)})  # fmt: skip
        proxy_port = port + 1
    import ray
    from ray import serve as ray_serve

    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count() or 2)
    ray_serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})

    def builder() -> FastAPI:  # built on the replica: an HTTP client does not pickle
        return build(upstream)

    # the same actor options as troupe's door
    @ray_serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @ray_serve.ingress(builder)
    class Relay:
        pass

    ray_serve.run(Relay.bind(), route_prefix="/", blocking=False)
    signal.signal(signal.SIGTERM, stop)
    try:
        signal.pause()
    finally:
        ray.shutdown()  # takes Serve with it; serve.shutdown() can hang on the direct-ingress replica


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("upstream")
    parser.add_argument("port", type=int)
    parser.add_argument("--serve", action="store_true", help="deploy on Ray Serve instead of uvicorn")
    parser.add_argument("--serve-defaults", action="store_true", help="with --serve: Serve's default mode")
    args = parser.parse_args()
    if args.serve:
        serve(args.upstream, args.port, args.serve_defaults)
    else:
        import uvicorn

        uvicorn.run(build(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")

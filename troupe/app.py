"""Assembly of the one door in: the FastAPI app with its routers and error translation, and the
uvicorn runner. No logic of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from troupe.clients.openai_api import error_json
from troupe.config.settings import Settings
from troupe.control_panel import api, conversations_api, life_api, memory_api
from troupe.control_panel.access import Door
from troupe.control_panel.limits import RateLimited
from troupe.core.errors import TroupeError
from troupe.core.persona_file import PersonaCatalog
from troupe.integrations import completions, elevenlabs, slack, vapi
from troupe.integrations.door import Gateway
from troupe.runtime import SessionClient, on_the_head

log = logging.getLogger(__name__)


def create_app(gateway: Gateway) -> Any:
    """The ASGI app: FastAPI routes inside the access layer (keys, CORS, limits, request metrics)."""
    return Door(create_routes(gateway), gateway.settings, gateway.keyring)


def create_routes(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="troupe", version="0.1.0", description="A company of AI personas, OpenAI-compatible.")
    app.state.gateway = gateway
    app.include_router(completions.router)
    app.include_router(vapi.router)
    app.include_router(elevenlabs.router)
    app.include_router(slack.router)
    app.include_router(api.router)
    app.include_router(conversations_api.router)
    app.include_router(life_api.router)
    app.include_router(memory_api.router)

    @app.exception_handler(TroupeError)
    async def troupe_error(request: Request, exc: TroupeError) -> JSONResponse:
        retry = exc.retry_after if isinstance(exc, RateLimited) else 60 if exc.status == 429 else 5
        headers = {"Retry-After": str(retry)} if exc.status in (429, 503) else None
        return JSONResponse(error_json(exc.message, exc.type, exc.code, exc.param), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            error_json(f"{param}: {first['msg']}", "invalid_request_error", "invalid_request", param), 422
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_json(str(exc.detail), kind, None), exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a stack trace never reaches a client; it goes to the log
        log.exception("unhandled error on %s", request.url.path)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, TroupeError):
            return await troupe_error(request, cause)
        return JSONResponse(error_json("Internal error.", "server_error", "internal_error"), 500)

    return app


def serve_uvicorn(runtime: Any, on_ready: Callable[[], None] | None = None) -> None:
    """The single-node door: the same app under uvicorn in this process; the actors stay on Ray.
    `on_ready` runs once the port listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready()

    gateway = Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client())
    config = uvicorn.Config(
        create_app(gateway), host=runtime.settings.host, port=runtime.settings.port, log_level="warning",
        log_config=None,  # uvicorn's lines go through troupe's handlers (its log file, masked, one schema)
    )  # fmt: skip
    Server(config).run()


def serve_with_ray(runtime: Any, *, blocking: bool = True, quiet: bool = False) -> None:
    """The default door: the same app as a Ray Serve deployment (what a cluster uses). `quiet` sends
    Serve's own driver-side messages to the log file instead of the console."""
    from ray import serve

    if quiet:
        serve_log = logging.getLogger("ray.serve")
        serve_log.handlers.clear()
        serve_log.propagate = True  # to the root logger: the log file only

    from troupe.runtime import direct_ingress_active

    settings = runtime.settings
    proxy_port = settings.port
    if direct_ingress_active(settings):
        # the replica answers on settings.port itself; Serve's proxy still runs, one port over
        proxy_port = settings.serve_proxy_port or settings.port + 1
    serve.start(http_options={"host": settings.host, "port": proxy_port}, detached=False)
    door = TroupeDoor.options(  # type: ignore[attr-defined]
        name="troupe-door",
        num_replicas=settings.door_replicas,
        max_ongoing_requests=settings.serve_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(settings, runtime.catalog)
    serve.run(door, name="troupe", route_prefix="/", blocking=blocking)


def _build_serve_door() -> Any:
    from ray import serve

    @serve.ingress()
    class _Door:
        """A Serve replica: looks the orchestrator up by name and serves the shared app."""

        def __init__(self, settings: Settings, catalog: PersonaCatalog) -> None:
            self.settings = settings
            self.catalog = catalog

        def __serve_build_asgi_app__(self) -> Any:
            import ray

            from troupe.actors.orchestrator import ORCHESTRATOR_NAME

            orchestrator = ray.get_actor(ORCHESTRATOR_NAME, namespace=self.settings.namespace)
            return create_app(
                Gateway(
                    self.settings, self.catalog, orchestrator, SessionClient(orchestrator, self.settings, self.catalog)
                )
            )

    return serve.deployment(_Door)


TroupeDoor = _build_serve_door()


def serve_app(args: dict[str, str]) -> Any:
    """Serve's application builder, for a cluster that deploys the door from a Serve config (KubeRay's
    RayService: `import_path: troupe.app:serve_app`). Settings come from the node's environment; the
    orchestrator is started (detached) unless one is running, so a redeploy keeps it and its sessions."""
    import ray

    from troupe.actors.orchestrator import ORCHESTRATOR_NAME, Orchestrator
    from troupe.config.settings import load_settings
    from troupe.core.persona_file import load_personas

    settings = load_settings(door="serve")
    catalog = load_personas(settings.personas_dir)
    orchestrator = Orchestrator.options(  # type: ignore[attr-defined]
        name=ORCHESTRATOR_NAME,
        namespace=settings.namespace,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=on_the_head(),
    ).remote(settings, catalog)
    # a bad database URL or model fails the deployment here, where the RayService's status shows it
    ray.get(orchestrator.start.remote())
    return TroupeDoor.options(  # type: ignore[attr-defined]
        name="troupe-door",
        num_replicas=settings.door_replicas,
        max_ongoing_requests=settings.serve_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(settings, catalog)

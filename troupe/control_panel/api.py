"""Probes and the control panel's own API: /health, /ready, /metrics, /api/status, /api/personas,
/api/processes (and by node), /api/sessions, the event stream and log, the charts' series, signing in,
and the page with its static files, in the contract's shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sse_starlette import EventSourceResponse

from troupe.control_panel.access import COOKIE, COOKIE_LIFETIME_S, COOKIE_ROLES, cookie_for
from troupe.control_panel.answers import (
    PAGE_MAX,
    Limit,
    NotFound,
    Offset,
    Search,
    Unprocessable,
    caller_matches,
    masks,
    page_of,
    principal_of,
    stamp,
)
from troupe.control_panel.metrics import render
from troupe.core.errors import TroupeError
from troupe.core.events import GROUPS
from troupe.core.logs import MASK, mask_caller
from troupe.core.messages import ProcessInfo
from troupe.integrations.door import GatewayDep
from troupe.integrations.tickets import TTL_S

router = APIRouter()


def uptime_text(seconds: float) -> str:
    s = int(seconds)
    hours, minutes, secs = s // 3600, s % 3600 // 60, s % 60
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"


def process_json(info: ProcessInfo, masked: bool = True) -> dict[str, Any]:
    m = info.metrics
    shown = MASK if masked else str  # a session's name and task name its caller
    return {
        "id": info.id,
        "kind": info.kind,
        "agent": info.agent,
        "name": shown(info.name),
        "status": info.status,
        "task": shown(info.task),
        "parent_id": info.parent_id,
        "started_at": stamp(info.started_at),
        "ended_at": stamp(info.ended_at),
        "restarts": info.restarts,
        "error": info.error,
        "metrics": {
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
            "total_tokens": m.total_tokens,
            "llm_calls": m.llm_calls,
            "tool_calls": m.tool_calls,
            "estimated_cost": round(m.estimated_cost, 6),
            "cost_known": m.cost_known,
            "tokens_estimated": m.tokens_estimated,
            "duration_ms": info.duration_ms,
        },
    }


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, gateway: GatewayDep) -> Any:
    checks: dict[str, str] = {}
    try:
        checks["ray"] = "ok"
        checks.update(await asyncio.wait_for(gateway.orchestrator.readiness.remote(), 10))
    except Exception as exc:
        checks["ray"] = f"failed: orchestrator not answering ({type(exc).__name__})"
    failing = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "ready" if not failing else "not ready", "checks": checks, "failing": failing}
    return JSONResponse(body, status_code=503 if failing else 200)


@router.get("/metrics")
async def metrics(request: Request, gateway: GatewayDep) -> Response:
    snapshot = await gateway.orchestrator.status.remote()
    return Response(render(snapshot), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/personas")
async def personas(request: Request, gateway: GatewayDep) -> list[dict[str, Any]]:
    status = await gateway.orchestrator.status.remote()
    spend = status.spend
    return [
        {
            "name": p.name,
            "role": p.role,
            "kind": p.kind,
            "reports_to": p.reports_to,
            "team": list(p.team),
            "model": p.model,
            "budget_usd": p.budget_usd,
            "spent_usd": round(spend.get(p.name, 0.0), 6),
            "token_budget": p.token_budget,
            "total_tokens": p.layers_tokens,
            "layers": {
                layer.name: {"version": layer.version, "token_estimate": layer.token_estimate} for layer in p.layers
            },
            "active": p.name in status.active_personas,
            "live_sessions": status.sessions_by_persona.get(p.name, 0),
        }
        for p in gateway.catalog
    ]


EVENTS_PING_S = 15.0  # a keep-alive comment this often, so proxies do not close an idle stream


EVENTS_POLL_S = 0.5


@router.get("/api/events")
async def events(request: Request, gateway: GatewayDep, since: int = 0, masked: bool = False) -> EventSourceResponse:
    """Server-sent events: what happens in the company, live (process and session lifecycle, tools...),
    each typed by `group` and `level`. A reconnecting client's Last-Event-ID resumes after that event.
    Callers are masked with `masked=true` (the panel asks it) and always for an operator's key."""
    last = request.headers.get("last-event-id")
    cursor = int(last) if last and last.isdigit() else since
    return event_stream(gateway.orchestrator, cursor, masked=masked or masks(request))


def event_stream(
    orchestrator: Any, cursor: int, *, ping_s: float = EVENTS_PING_S, masked: bool = True
) -> EventSourceResponse:
    """The orchestrator's events after `cursor` as an SSE stream, by sse-starlette: its keep-alive pings,
    and the stream (with its polling) ended when the client goes. One `id`, `event` and `data` line per
    event, blocks split by a bare newline, as the panel's reader expects."""

    async def stream() -> AsyncIterator[dict[str, Any]]:
        nonlocal cursor
        yield {"retry": 2000}
        while True:
            found = await orchestrator.events_since.remote(cursor)
            for item in found:
                cursor = item["seq"]
                shown = event_json(item) if masked else item
                yield {"id": str(cursor), "event": item["type"], "data": json.dumps(shown)}
            if not found:
                await asyncio.sleep(EVENTS_POLL_S)

    return EventSourceResponse(stream(), ping=ping_s, sep="\n", headers={"Cache-Control": "no-cache"})


def event_json(item: dict[str, Any]) -> dict[str, Any]:
    """An event as the panel may show it: the caller it names masked, any number in its text too."""
    shown = {key: MASK(value) if isinstance(value, str) else value for key, value in item.items()}
    if item.get("caller_id"):
        shown["caller_id"] = mask_caller(item["caller_id"])
    return shown


@router.get("/api/events/log")
async def event_log(
    request: Request, gateway: GatewayDep, group: Annotated[list[str] | None, Query(max_length=len(GROUPS))] = None,
    type: Search = None, persona: str | None = None, limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:  # fmt: skip
    """The recent event log (the orchestrator keeps the last 2,000), newest first, by group (conversation,
    life, process, pool, audit), type prefix (e.g. `process.`) and persona, a page at a time."""
    unknown = [g for g in group or () if g not in GROUPS]
    if unknown:
        raise Unprocessable(f"Unknown group {unknown[0]!r}; one of {', '.join(GROUPS)}.", param="group")
    name = gateway.catalog.get(persona).name if persona else ""
    found, total = await gateway.orchestrator.recent_events.remote(tuple(group or ()), type or "", limit, offset, name)
    return page_of([event_json(e) for e in found], total, offset)


@router.get("/api/status")
async def status(request: Request, gateway: GatewayDep) -> dict[str, Any]:
    raw = await gateway.orchestrator.status.remote()
    return {
        "status": "ok",
        "uptime": uptime_text(raw.uptime_s),
        "process_count": raw.process_count,
        "session_count": raw.session_count,
        "personas": raw.executives,
        "active_personas": raw.active_personas,
    }


@router.get("/api/processes")
async def processes(
    request: Request, gateway: GatewayDep, status: str | None = None, agent: str | None = None,
    kind: str | None = None, q: Search = None, limit: Limit = None, offset: Offset = 0,
) -> Any:  # fmt: skip
    """Processes, oldest first: the contract's plain array, or with `limit` a page (newest first, each
    with the node it runs on), searchable by id, name and task with `q`."""
    found = await gateway.orchestrator.list_processes.remote(status=status, agent=agent, kind=kind)
    if limit is None:
        return [process_json(p, masks(request)) for p in found]
    if q:
        needle = q.lower()
        found = [p for p in found if needle in f"{p.id} {MASK(p.name)} {MASK(p.task)}".lower()]
    chosen = list(reversed(found))[offset : offset + limit]
    nodes = await gateway.orchestrator.process_nodes.remote()  # none for one finished or not answering
    items = [{**process_json(p), "node": nodes.get(p.id)} for p in chosen]
    return page_of(items, len(found), offset)


@router.get("/api/processes/tree")
async def process_tree(request: Request, gateway: GatewayDep) -> dict[str, Any]:
    """The live processes by node and kind, with restarts and last error, and the spawn tree of
    delegated tasks (every task and its parent chain, finished ones included while the registry keeps them)."""
    found: list[ProcessInfo] = await gateway.orchestrator.list_processes.remote()
    nodes = await gateway.orchestrator.process_nodes.remote()
    unknown = {"id": "unknown", "name": "unknown"}
    by_node: dict[str, dict[str, Any]] = {}
    for p in found:
        if p.status not in ("running", "pending"):
            continue
        node = nodes.get(p.id, unknown)
        entry = by_node.setdefault(node["id"], {"node": node["id"], "name": node["name"], "kinds": {}})
        kind = entry["kinds"].setdefault(p.kind, {"count": 0, "restarts": 0, "last_error": None})
        kind["count"] += 1
        kind["restarts"] += p.restarts
        if p.error:
            kind["last_error"] = MASK(p.error)
    by_id = {p.id: p for p in found}
    delegated = {p.id for p in found if p.kind == "task"}
    wanted = set(delegated)
    for pid in delegated:  # each task's parents, up to the root, so the tree has its trunk
        parent = by_id[pid].parent_id
        while parent and parent in by_id and parent not in wanted:
            wanted.add(parent)
            parent = by_id[parent].parent_id
    spawn = [
        {"id": p.id, "parent_id": p.parent_id if p.parent_id in wanted else None, "kind": p.kind, "agent": p.agent,
         "task": MASK(p.task), "status": p.status, "error": MASK(p.error) if p.error else None}
        for p in found if p.id in wanted
    ]  # fmt: skip
    shown = sorted(by_node.values(), key=lambda n: (n["name"] in ("unknown", "gone"), n["name"]))
    return {"nodes": shown, "spawn_tree": spawn}


@router.get("/api/processes/{process_id}")
async def process(request: Request, gateway: GatewayDep, process_id: str) -> dict[str, Any]:
    found = await gateway.orchestrator.get_process.remote(process_id)
    if found is None:
        raise NotFound(f"No process {process_id!r}.", param="process_id")
    info, children = found
    masked = masks(request)
    return {**process_json(info, masked), "children": [process_json(c, masked) for c in children]}


@router.get("/api/sessions")
async def sessions(
    request: Request, gateway: GatewayDep, persona: str | None = None, status: str | None = None,
    caller: Search = None, limit: Limit = None, offset: Offset = 0,
) -> Any:  # fmt: skip
    """The live sessions: the contract's plain array, or with `limit` a page (most recently active
    first), by persona, status and caller (the whole id, or the last digits a masked number shows).
    A page masks callers' ids (the conversation view reveals one, audited); so does the plain array for
    an operator's key."""
    found = await gateway.orchestrator.list_sessions.remote()
    name = gateway.catalog.get(persona).name if persona else None
    found = [
        s for s in found
        if (name is None or s.agent == name) and (status is None or s.status == status)
        and (not caller or caller_matches(s.caller_id, caller))
    ]  # fmt: skip
    masked = limit is not None or masks(request)
    rows = [
        {
            "caller_id": mask_caller(s.caller_id) if masked else s.caller_id,
            "process_id": s.process_id,
            "agent": s.agent,
            "status": s.status,
            "started_at": stamp(s.started_at),
            "last_active_at": stamp(s.last_active_at),
            "session_id": s.session_id,
        }
        for s in sorted(found, key=lambda s: s.last_active_at, reverse=limit is not None)
    ]
    if limit is None:
        return rows
    return page_of(rows[offset : offset + limit], len(rows), offset)


STATIC = Path(__file__).resolve().parent / "static"


PAGE = STATIC / "index.html"


STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".txt": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}  # fmt: skip


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    """The live control panel: a static page; all its data comes from /api/* (which needs the key)."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@router.get("/static/{path:path}", include_in_schema=False)
async def static(path: Annotated[str, PathParam(max_length=200)]) -> Response:
    """The panel's own script and styles and the vendored chart library (uPlot, MIT; vendor/uplot/LICENSE)."""
    target = (STATIC / path).resolve()
    kind = STATIC_TYPES.get(target.suffix) if target.name != "index.html" else None
    if not target.is_relative_to(STATIC) or not target.is_file() or kind is None:
        raise NotFound(f"No static file {path!r}.", param="path")
    return Response(target.read_bytes(), media_type=kind, headers={"Cache-Control": "public, max-age=300"})


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: SecretStr = Field(max_length=512)


class Unauthorised(TroupeError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


@router.post("/api/login", status_code=200)
async def login(request: Request, gateway: GatewayDep, body: Login) -> JSONResponse:
    """Sign the panel in with an admin or operator key: the answer sets an HttpOnly, SameSite=Strict
    session cookie (12 h), so the page never keeps the key itself."""
    key = gateway.keyring.find(body.key.get_secret_value().encode())
    if key is None or key.role not in COOKIE_ROLES:
        raise Unauthorised("That key cannot sign in to the control panel (it needs an admin or operator key).")
    response = JSONResponse({"name": key.name, "role": key.role})
    response.set_cookie(
        COOKIE, cookie_for(key), max_age=COOKIE_LIFETIME_S, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


@router.post("/api/ws-tickets", status_code=201)
async def ws_ticket(request: Request, gateway: GatewayDep) -> dict[str, Any]:
    """A single-use ticket for the voice WebSocket (`/ws/elevenlabs?ticket=`), valid 60 s: a browser
    cannot send a key on a WebSocket, and a key in its URL would stay in logs and history."""
    key = getattr(request.state, "principal", None)
    subject = key.name if key is not None else "insecure"
    return {"ticket": gateway.tickets.issue(subject), "expires_in": int(TTL_S)}


@router.post("/api/logout", status_code=200)
async def logout() -> JSONResponse:
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.post("/api/sessions/{caller_id}/end")
async def end_session(request: Request, gateway: GatewayDep, caller_id: str, persona: str) -> dict[str, Any]:
    name = gateway.catalog.get(persona).name
    summary = await gateway.orchestrator.end_session.remote(caller_id, name)
    if summary is None:
        raise NotFound(f"No active session for {caller_id!r} with {name}.", param="caller_id")
    gateway.client.forget(caller_id, name)
    return {"caller_id": caller_id, "persona": name, "ended": True, "summary": summary}


@router.get("/api/me")
async def me(request: Request) -> dict[str, Any]:
    """Who the panel is signed in as, and what that role may do there."""
    name, role = principal_of(request)
    return {"name": name, "role": role, "may": {"reveal": True, "forget": True, "audit": role == "admin"}}


@router.get("/api/series")
async def series(
    request: Request, gateway: GatewayDep, window: Annotated[str, Query(pattern="^(hour|day)$")] = "hour"
) -> dict[str, Any]:
    """The panel's charts: time to first token, turns, errors, tokens and cost by persona, live sessions,
    the free pool and restarts, per minute over the last hour or per 10 minutes over the last day, kept
    by the orchestrator (no Prometheus needed). Budgets come with it, to draw spend against."""
    found: dict[str, Any] = await gateway.orchestrator.series_view.remote(window)
    status = await gateway.orchestrator.status.remote()
    return {**found, "budgets": status.budgets, "spent_usd": {k: round(v, 6) for k, v in status.spend.items()}}

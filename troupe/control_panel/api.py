"""Probes and the control-panel API: /health, /ready, /api/status, /api/processes, /api/sessions,
/api/personas (with their life and memory), and what troupe knows of a caller, in the contract's shapes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sse_starlette import EventSourceResponse

from troupe.control_panel.access import COOKIE, COOKIE_LIFETIME_S, COOKIE_ROLES, cookie_for
from troupe.control_panel.metrics import render
from troupe.core.errors import InvalidRequest, TroupeError
from troupe.core.events import GROUPS
from troupe.core.logs import MASK, mask_caller
from troupe.core.messages import ProcessInfo
from troupe.core.schedule import ACTIVITIES, validate
from troupe.integrations.door import Gateway, GatewayDep
from troupe.integrations.tickets import TTL_S
from troupe.life import goals as goals_file
from troupe.store import SELF, CallerRecord, MemoryBlockRow, MemoryRecord, SessionRecord, Store
from troupe.store.memory import LAYERS

router = APIRouter()
log = logging.getLogger(__name__)


class NotFound(TroupeError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


PAGE_MAX = 200  # items one page of any list may hold
OFFSET_MAX = 10**9  # past any store's size, and within the 64-bit integer the database takes
Limit = Annotated[int | None, Query(ge=1, le=PAGE_MAX, description="page size; with it the answer is a page")]
Offset = Annotated[int, Query(ge=0, le=OFFSET_MAX)]
Search = Annotated[str | None, Query(max_length=200)]


def page_of(items: list[Any], total: int, offset: int) -> dict[str, Any]:
    """One page in the panel's shape: its items, how many match in all, and whether more follow."""
    return {"items": items, "total": total, "offset": offset, "has_more": offset + len(items) < total}


def caller_matches(caller_id: str, search: str) -> bool:
    """The panel's caller search: the whole id, or its ending (the digits a masked number shows)."""
    return caller_id == search or (len(search) >= 4 and caller_id.endswith(search))


def uptime_text(seconds: float) -> str:
    s = int(seconds)
    hours, minutes, secs = s // 3600, s % 3600 // 60, s % 60
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"


def masks(request: Request) -> bool:
    """Whether the contract's plain answers mask callers for this key: an operator's do; an admin's (and an
    --insecure door's) are the contract's own, for scripts. The panel's pages mask for everyone, and a
    number is shown there only through the audited reveal."""
    key = getattr(request.state, "principal", None)
    return key is not None and key.role != "admin"


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
        "started_at": info.started_at.isoformat().replace("+00:00", "Z"),
        "ended_at": info.ended_at.isoformat().replace("+00:00", "Z") if info.ended_at else None,
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
    nodes = await gateway.orchestrator.process_nodes.remote()
    names = await gateway.orchestrator.node_names.remote()
    items = [{**process_json(p), "node": _node_shown(nodes.get(p.id), names)} for p in chosen]
    return page_of(items, len(found), offset)


def _node_shown(node: str | None, names: dict[str, str]) -> dict[str, str] | None:
    if node is None:
        return None  # finished, or not answering just now
    return {"id": node[:12], "name": names.get(node, "gone")}


@router.get("/api/processes/tree")
async def process_tree(request: Request, gateway: GatewayDep) -> dict[str, Any]:
    """The live processes by node and kind, with restarts and last error, and the spawn tree of
    delegated tasks (every task and its parent chain, finished ones included while the registry keeps them)."""
    found: list[ProcessInfo] = await gateway.orchestrator.list_processes.remote()
    nodes = await gateway.orchestrator.process_nodes.remote()
    names = await gateway.orchestrator.node_names.remote()
    by_node: dict[str, dict[str, Any]] = {}
    for p in found:
        if p.status not in ("running", "pending"):
            continue
        node = nodes.get(p.id)
        key = node[:12] if node else "unknown"
        entry = by_node.setdefault(key, {"node": key, "name": names.get(node, "unknown") if node else "unknown",
                                         "kinds": {}})  # fmt: skip
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
    return {"nodes": sorted(by_node.values(), key=lambda n: (n["name"] == "unknown", n["name"])), "spawn_tree": spawn}


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
            "started_at": _stamp(s.started_at),
            "last_active_at": _stamp(s.last_active_at),
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


@router.get("/internal/life/trigger", operation_id="life_trigger_get")
@router.post("/internal/life/trigger", operation_id="life_trigger_post")
async def life_trigger(
    request: Request, gateway: GatewayDep, activity: str | None = None, persona: str | None = None
) -> Any:
    executives = [p.name for p in gateway.catalog.executives()]
    if not activity:
        return JSONResponse(
            {
                "error": "Missing 'activity' query parameter",
                "activities": list(ACTIVITIES),
                "personas": executives,
                "examples": [
                    "/internal/life/trigger?activity=post&persona=Tony",
                    "/internal/life/trigger?activity=post (triggers all personas)",
                ],
            },
            status_code=400,
        )
    if activity not in ACTIVITIES:
        raise InvalidRequest(f"Unknown activity {activity!r}; one of {', '.join(ACTIVITIES)}.", param="activity")
    if persona:
        name = gateway.catalog.get(persona).name
        if name not in executives:
            raise NotFound(f"{name} has no life loop (only executives do).", param="persona")
        result = await gateway.orchestrator.trigger.remote(name, activity)
        return {"persona": name, "activity": activity, "result": result}
    results = await asyncio.gather(*(gateway.orchestrator.trigger.remote(n, activity) for n in executives))
    return {"activity": activity, "results": dict(zip(executives, results, strict=True))}


# ---------------------------------------------------------------------- life: schedules, journal, goals, posts


class Unprocessable(TroupeError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_value"


class ScheduleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron_expression: str | None = Field(default=None, max_length=120)
    is_paused: bool | None = None


def _stamp(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def _schedule_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "next_trigger_at": _stamp(entry["next_trigger_at"]),
        "last_triggered_at": _stamp(entry["last_triggered_at"]),
    }


def _schedule_of(gateway: Gateway, schedule_id: str) -> tuple[str, str]:
    """'tony.news' -> ('Tony', 'news'), or 404 naming what is unknown."""
    key, _, activity = schedule_id.partition(".")
    executives = {p.key: p.name for p in gateway.catalog.executives()}
    if key not in executives or activity not in ACTIVITIES:
        raise NotFound(
            f"No schedule {schedule_id!r}; ids are <persona>.<activity>, e.g. 'tony.news'.", param="schedule_id"
        )
    return executives[key], activity


@router.get("/api/schedules")
async def schedules(request: Request, gateway: GatewayDep, persona: str | None = None) -> dict[str, Any]:
    name = gateway.catalog.get(persona).name if persona else None
    found = await gateway.orchestrator.schedules.remote(name)
    return {"schedules": [_schedule_json(entry) for entry in found]}


@router.get("/api/schedules/{schedule_id}/executions")
async def schedule_executions(
    request: Request, gateway: GatewayDep, schedule_id: str, limit: int = 50
) -> dict[str, Any]:
    persona, activity = _schedule_of(gateway, schedule_id)
    store = await gateway.store()
    runs = await store.life_runs(persona, activity, limit=max(1, min(limit, 500)))
    return {
        "schedule_id": schedule_id,
        "executions": [
            {
                "triggered_at": _stamp(run.triggered_at),
                "finished_at": _stamp(run.finished_at),
                "slot": _stamp(run.slot),
                "status": run.status,
                "output_summary": run.output[:500],
                "process_id": run.process_id,
            }
            for run in runs
        ],
    }


@router.patch("/api/schedules/{schedule_id}")
async def change_schedule(
    request: Request, gateway: GatewayDep, schedule_id: str, change: ScheduleChange
) -> dict[str, Any]:
    persona, activity = _schedule_of(gateway, schedule_id)
    if change.cron_expression is None and change.is_paused is None:
        raise Unprocessable("Nothing to change: send cron_expression and/or is_paused.", param="body")
    if change.cron_expression is not None:
        problem = validate(" ".join(change.cron_expression.split()))
        if problem:
            raise Unprocessable(f"Invalid cron_expression: {problem}", param="cron_expression")
    result = await gateway.orchestrator.update_schedule.remote(
        persona, activity, change.cron_expression, change.is_paused
    )
    return _schedule_json(result)


@router.get("/api/personas/{name}/journal")
async def journal(request: Request, gateway: GatewayDep, name: str, date: str | None = None) -> dict[str, Any]:
    persona = gateway.catalog.get(name)
    if date is None:
        date = dt.datetime.now(ZoneInfo(persona.timezone)).date().isoformat()
    try:
        day = dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise InvalidRequest(f"date must be YYYY-MM-DD, got {date!r}.", param="date") from None
    store = await gateway.store()
    entries = await store.journal(persona.name, day)
    markdown = f"# {persona.name}'s journal, {day}\n\n" + "\n\n".join(e.text for e in entries) if entries else ""
    return {
        "persona": persona.name,
        "date": day,
        "entries": [{"created_at": _stamp(e.created_at), "text": e.text} for e in entries],
        "markdown": markdown,
    }


@router.get("/api/personas/{name}/goals")
async def goals(request: Request, gateway: GatewayDep, name: str) -> dict[str, Any]:
    persona = gateway.catalog.get(name)
    path = goals_file.goals_path(gateway.settings.goals_dir, persona.key)
    if not path.exists():
        raise NotFound(f"{persona.name} has no goals file.", param="name")
    try:
        loaded = goals_file.load_goals(path)
    except goals_file.GoalsFileError as exc:
        raise Unprocessable(str(exc), param="goals") from None
    today = dt.datetime.now(ZoneInfo(persona.timezone)).date()
    return {"persona": persona.name, **goals_file.to_dict(loaded, goals_file.at_risk(loaded, today))}


@router.get("/api/posts")
async def posts(
    request: Request, gateway: GatewayDep, persona: str | None = None, status: str | None = None, limit: int = 50,
    offset: Annotated[int | None, Query(ge=0, le=OFFSET_MAX, description="with it, the answer is also a page")] = None,
) -> Any:  # fmt: skip
    name = gateway.catalog.get(persona).name if persona else None
    store = await gateway.store()
    total = None
    if offset is None:
        found = await store.posts(name, status=status, limit=max(1, min(limit, 500)))
    else:
        found, total = await store.posts_page(persona=name, status=status, limit=max(1, min(limit, 500)), offset=offset)
    shown = {
        "posts": [
            {
                "id": p.id,
                "persona": p.persona,
                "text": p.text,
                "status": p.status,
                "delivered_to": [t for t in p.delivered_targets.split(",") if t],
                "pending": [t for t in p.pending_targets.split(",") if t],
                "attempts": p.attempts,
                "last_error": p.last_error or None,
                "created_at": _stamp(p.created_at),
                "delivered_at": _stamp(p.delivered_at),
            }
            for p in found
        ]
    }
    if total is None:
        return shown
    return {**shown, **page_of(shown["posts"], total, offset or 0)}


# ---------------------------------------------------------------------- memory: a persona's, and a caller's

MEMORY_PAGE_MAX = 100  # entries one page of a persona's memories may hold
CALLER_LIST_MAX = 100  # entries of each kind the caller view lists (its counts say how many there are)
CallerId = Annotated[str, PathParam(max_length=200)]


def _subject_shown(subject: str) -> str:
    """A persona's own subjects as they are; a caller's id masked (a phone number is never echoed)."""
    if subject == SELF or subject.startswith("life:"):
        return subject
    return mask_caller(subject) or ""


def _memory_json(memory: MemoryRecord) -> dict[str, Any]:
    return {
        "id": memory.id,
        "persona": memory.persona,
        "layer": memory.layer,
        "kind": memory.kind,
        "subject": _subject_shown(memory.subject),
        "content": MASK(memory.content),  # what a caller said may hold a phone number too
        "source": MASK(memory.source),
        "channel": memory.channel,
        "importance": round(memory.importance, 3),
        "created_at": _stamp(memory.created_at),
        "superseded_by": memory.superseded_by,
        "superseded_at": _stamp(memory.superseded_at),
    }


@router.get("/api/personas/{name}/memory")
async def persona_memory(
    request: Request, gateway: GatewayDep, name: str, layer: str | None = None,
    caller: Annotated[str | None, Query(max_length=200)] = None, limit: int = 20, offset: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """A persona's memory by layer (live and superseded), its core blocks, and a page of its memories,
    newest first (about one caller, with `caller`)."""
    persona = gateway.catalog.get(name)
    if layer is not None and layer not in LAYERS:
        raise Unprocessable(f"Unknown layer {layer!r}; one of {', '.join(LAYERS)}.", param="layer")
    limit, offset = max(0, min(limit, MEMORY_PAGE_MAX)), max(0, min(offset, OFFSET_MAX))
    store = await gateway.store()
    stats = await store.memory_counts(persona.name, caller)
    found = await store.memories_of(persona.name, caller, layer=layer, limit=limit, offset=offset) if limit else []
    total = sum(n["live"] + n["superseded"] for key, n in stats.items() if layer is None or key == layer)
    return {
        "persona": persona.name,
        "stats": stats,
        "core_block": {
            "persona": MASK(await store.memory_block(persona.name, SELF)),
            "caller": MASK(await store.memory_block(persona.name, caller)) if caller else None,
        },
        "recent": {
            "items": [_memory_json(m) for m in found],
            "total": total,
            "has_more": offset + len(found) < total,
        },
    }


@dataclass(frozen=True)
class Known:
    """What the store holds of a caller, beyond the memories themselves."""

    counts: dict[str, dict[str, int]]  # memories by layer: live and superseded
    blocks: list[MemoryBlockRow]
    caller: CallerRecord | None
    last_persona: str | None  # None: no session of theirs was ever kept


async def _known_of(store: Store, caller: str) -> Known | None:
    """What the store holds of `caller`, or None when it holds nothing at all."""
    if caller == SELF or caller.startswith("life:"):  # a persona's own memories: forgetting them is no privacy act
        raise Unprocessable(f"{caller!r} is a persona's own memory, not a caller.", param="caller")
    known = Known(
        counts=await store.memory_counts(None, caller),
        blocks=await store.memory_blocks(subject=caller),
        caller=await store.get_caller(caller),
        last_persona=await store.latest_persona(caller),
    )
    memories = sum(n["live"] + n["superseded"] for n in known.counts.values())
    if known.caller is None and known.last_persona is None and not known.blocks and not memories:
        return None
    return known


@router.get("/api/callers/{caller}/memory")
async def caller_memory(request: Request, gateway: GatewayDep, caller: CallerId) -> dict[str, Any]:
    """What troupe knows of one person, across personas, with where each piece came from: profile facts
    (live, and the corrected ones with what replaced them and when), episodes, core blocks and counts."""
    store = await gateway.store()
    known = await _known_of(store, caller)
    if known is None:
        raise NotFound("troupe knows nothing of that caller.", param="caller")
    profile = await store.memories_of(None, caller, layer="profile", limit=CALLER_LIST_MAX)
    by_id = {m.id: m for m in profile}
    history = []
    for old in (m for m in profile if m.superseded_by is not None):
        new = by_id.get(old.superseded_by or 0)
        replaced = {"id": old.superseded_by, "content": MASK(new.content) if new else None,
                    "source": MASK(new.source) if new else None}  # fmt: skip
        history.append({**_memory_json(old), "replaced_by": replaced})
    episodes = await store.memories_of(None, caller, layer="episode", live=True, limit=CALLER_LIST_MAX)
    knowledge = await store.memories_of(None, caller, layer="knowledge", live=True, limit=CALLER_LIST_MAX)
    row = known.caller
    return {
        "caller": mask_caller(caller),
        "first_seen_at": _stamp(row.first_seen_at) if row else None,
        "last_seen_at": _stamp(row.last_seen_at) if row else None,
        "last_spoke_with": known.last_persona,
        "counts": {**known.counts, "core_blocks": len(known.blocks)},
        "profile": {"live": [_memory_json(m) for m in profile if m.superseded_by is None], "history": history},
        "episodes": [_memory_json(m) for m in episodes],
        "knowledge": [_memory_json(m) for m in knowledge],
        "core_blocks": [
            {"persona": b.persona, "content": MASK(b.content), "updated_at": _stamp(b.updated_at)} for b in known.blocks
        ],
    }


@router.delete("/api/callers/{caller}")
async def forget_caller(request: Request, gateway: GatewayDep, caller: CallerId) -> dict[str, Any]:
    """Delete a person's data everywhere (an operator's action; the orchestrator records it as the event
    `caller.forgotten`): their live sessions end unsummarised, and what the store held of them goes."""
    if await _known_of(await gateway.store(), caller) is None:
        raise NotFound("troupe knows nothing of that caller.", param="caller")
    deleted = await gateway.orchestrator.forget_caller.remote(caller)
    actor, role = _principal(request)
    counts = ", ".join(f"{n} {kind}" for kind, n in deleted.items() if n)
    await (await gateway.store()).audit(actor, role, "forget", mask_caller(caller) or "", detail=counts)
    for persona in gateway.catalog:
        gateway.client.forget(caller, persona.name)  # the door's copies of their sessions go too
    return {"caller": mask_caller(caller), "deleted": deleted}


# ---------------------------------------------------------------------- conversations, kept: the panel's view


def _principal(request: Request) -> tuple[str, str]:
    """Who is asking: the key's name and role (never the key)."""
    key = getattr(request.state, "principal", None)
    return (key.name, key.role) if key is not None else ("insecure", "admin")


@router.get("/api/me")
async def me(request: Request) -> dict[str, Any]:
    """Who the panel is signed in as, and what that role may do there."""
    name, role = _principal(request)
    return {"name": name, "role": role, "may": {"reveal": True, "forget": True, "audit": role == "admin"}}


def _conversation_json(row: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": row.id,
        "caller": mask_caller(row.caller_id),
        "persona": row.persona,
        "status": row.status,
        "turns": row.turns,
        "started_at": _stamp(row.started_at),
        "last_active_at": _stamp(row.last_active_at),
        "ended_at": _stamp(row.ended_at),
        "summary": MASK(row.summary) if row.summary else None,
    }


@router.get("/api/conversations")
async def conversations(
    request: Request, gateway: GatewayDep, persona: str | None = None,
    status: Annotated[str | None, Query(pattern="^(active|ended)$")] = None, caller: Search = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 20, offset: Offset = 0,
) -> dict[str, Any]:  # fmt: skip
    """Kept conversations, live and ended, the most recently active first, a page at a time: by persona,
    status and caller (the whole id, or the last digits a masked number shows)."""
    name = gateway.catalog.get(persona).name if persona else None
    store = await gateway.store()
    search = caller if caller and (len(caller) >= 4 or caller.startswith(("+", "slack", "anon"))) else None
    if caller and search is None:
        raise Unprocessable("Search for a caller by their whole id or at least its last 4 characters.", param="caller")
    found, total = await store.conversations(persona=name, status=status, caller=search, limit=limit, offset=offset)
    return page_of([_conversation_json(r) for r in found], total, offset)


def _tool_calls_shown(raw: str | None) -> list[dict[str, Any]]:
    if not raw:
        return []
    try:
        calls = json.loads(raw)
    except ValueError:
        return []
    return [{"id": c.get("id"), "name": c.get("name") or c.get("function", {}).get("name"),
             "arguments": MASK(str(c.get("arguments") or c.get("function", {}).get("arguments") or ""))}
            for c in calls if isinstance(c, dict)]  # fmt: skip


SessionId = Annotated[str, PathParam(max_length=64)]


async def _kept(gateway: Gateway, session_id: str) -> SessionRecord:
    store = await gateway.store()
    row = await store.get_session(session_id)
    if row is None:
        raise NotFound(f"No conversation {session_id!r}.", param="session_id")
    return row


@router.get("/api/conversations/{session_id}")
async def conversation(request: Request, gateway: GatewayDep, session_id: SessionId) -> dict[str, Any]:
    """One conversation turn by turn: what was said, the tools called, tokens, cost and timing, and
    whether the reply was cut off. Numbers in it are masked."""
    row = await _kept(gateway, session_id)
    store = await gateway.store()
    messages, figures, earlier = await store.transcript(session_id)
    by_turn = {t.turn_id: t for t in figures}
    turns: list[dict[str, Any]] = []
    for m in messages:
        if not turns or turns[-1]["turn_id"] != m.turn_id or (m.role == "user" and turns[-1]["has_reply"]):
            t = by_turn.get(m.turn_id or "")
            turns.append({
                "turn_id": m.turn_id, "at": _stamp(t.at if t else m.created_at), "messages": [], "has_reply": False,
                "ttft_ms": t.ttft_ms if t else None, "duration_ms": t.duration_ms if t else None,
                "input_tokens": t.input_tokens if t else None, "output_tokens": t.output_tokens if t else None,
                "tool_calls": t.tool_calls if t else None, "cost_usd": round(t.cost_usd, 6) if t else None,
                "interrupted": t.interrupted if t else False, "error_code": t.error_code if t else None,
            })  # fmt: skip
        turn = turns[-1]
        turn["has_reply"] = turn["has_reply"] or m.role == "assistant"
        turn["interrupted"] = turn["interrupted"] or m.interrupted
        turn["messages"].append({
            "role": m.role, "content": MASK(m.content) if m.content else m.content, "name": m.name,
            "tool_calls": _tool_calls_shown(m.tool_calls), "tool_call_id": m.tool_call_id,
            "interrupted": m.interrupted, "created_at": _stamp(m.created_at),
        })  # fmt: skip
    for turn in turns:
        del turn["has_reply"]
    kept = [t for t in figures if t.turn_id not in {turn["turn_id"] for turn in turns}]
    for t in kept:  # a turn that failed before any message was kept still shows, with its error
        turns.append({"turn_id": t.turn_id, "at": _stamp(t.at), "messages": [], "ttft_ms": t.ttft_ms,
                      "duration_ms": t.duration_ms, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
                      "tool_calls": t.tool_calls, "cost_usd": round(t.cost_usd, 6), "interrupted": t.interrupted,
                      "error_code": t.error_code})  # fmt: skip
    turns.sort(key=lambda t: t["at"] or "")
    totals = {
        "input_tokens": sum(t.input_tokens for t in figures), "output_tokens": sum(t.output_tokens for t in figures),
        "cost_usd": round(sum(t.cost_usd for t in figures), 6),
        "interrupted": sum(1 for t in turns if t["interrupted"]),
    }  # fmt: skip
    return {**_conversation_json(row), "earlier_messages": earlier, "totals": totals, "turns": turns}


@router.post("/api/conversations/{session_id}/reveal")
async def reveal(request: Request, gateway: GatewayDep, session_id: SessionId) -> dict[str, Any]:
    """The caller's full id (a phone number unmasked), for an operator who must call them back: an
    audited action, kept in the audit log with who asked, and shown in the live feed."""
    row = await _kept(gateway, session_id)
    actor, role = _principal(request)
    shown = mask_caller(row.caller_id) or ""
    store = await gateway.store()
    await store.audit(actor, role, "reveal", shown, detail=f"conversation {session_id} with {row.persona}")
    await gateway.orchestrator.audited.remote("reveal", actor, shown)
    log.info("caller revealed", extra={"event": "audit.reveal", "actor": actor, "session_id": session_id})
    return {"session_id": session_id, "caller_id": row.caller_id, "audited": True}


@router.post("/api/conversations/{session_id}/end")
async def end_conversation(request: Request, gateway: GatewayDep, session_id: SessionId) -> dict[str, Any]:
    """End a live conversation (summarised, as when its caller hangs up)."""
    row = await _kept(gateway, session_id)
    if row.status != "active":
        raise NotFound(f"Conversation {session_id!r} has ended already.", param="session_id")
    summary = await gateway.orchestrator.end_session.remote(row.caller_id, row.persona)
    gateway.client.forget(row.caller_id, row.persona)
    return {"session_id": session_id, "ended": summary is not None, "summary": MASK(summary) if summary else None}


@router.get("/api/audit")
async def audit_log(
    request: Request, gateway: GatewayDep, limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 20, offset: Offset = 0
) -> dict[str, Any]:
    """Who revealed or forgot whom, newest first (subjects masked)."""
    store = await gateway.store()
    found, total = await store.audit_log(limit=limit, offset=offset)
    items = [{"at": _stamp(a.at), "actor": a.actor, "role": a.role, "action": a.action, "subject": a.subject,
              "detail": a.detail} for a in found]  # fmt: skip
    return page_of(items, total, offset)


@router.get("/api/runs")
async def runs(
    request: Request, gateway: GatewayDep, persona: str | None = None, activity: str | None = None,
    status: Annotated[str | None, Query(pattern="^(completed|failed|skipped)$")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 20, offset: Offset = 0,
) -> dict[str, Any]:  # fmt: skip
    """The life loops' execution log, newest first, a page at a time, by persona, activity and status."""
    name = gateway.catalog.get(persona).name if persona else None
    if activity is not None and activity not in ACTIVITIES:
        raise Unprocessable(f"Unknown activity {activity!r}; one of {', '.join(ACTIVITIES)}.", param="activity")
    store = await gateway.store()
    found, total = await store.life_runs_page(persona=name, activity=activity, status=status, limit=limit,
                                               offset=offset)  # fmt: skip
    items = [{"persona": r.persona, "activity": r.activity, "status": r.status, "triggered_at": _stamp(r.triggered_at),
              "finished_at": _stamp(r.finished_at), "slot": _stamp(r.slot), "output_summary": MASK(r.output[:500]),
              "process_id": r.process_id} for r in found]  # fmt: skip
    return page_of(items, total, offset)


@router.get("/api/personas/{name}/journal/days")
async def journal_days(request: Request, gateway: GatewayDep, name: str) -> dict[str, Any]:
    """The days a persona wrote in its journal, newest first (the last 30), with their entry counts."""
    persona = gateway.catalog.get(name)
    store = await gateway.store()
    days = await store.journal_days(persona.name)
    return {"persona": persona.name, "days": [{"date": day, "entries": n} for day, n in days]}


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

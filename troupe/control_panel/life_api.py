"""The life loops on the panel's API: running an activity now, schedules (paused, resumed, re-timed),
the execution log, journals by day, goals with what is at risk, and posts with where they went."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from troupe.control_panel.answers import (
    OFFSET_MAX,
    PAGE_MAX,
    NotFound,
    Offset,
    Unprocessable,
    page_of,
    stamp,
)
from troupe.core.errors import InvalidRequest
from troupe.core.logs import MASK
from troupe.core.schedule import ACTIVITIES, validate
from troupe.integrations.door import Gateway, GatewayDep
from troupe.life import goals as goals_file
from troupe.store import LifeRunRecord

router = APIRouter()


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


class ScheduleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron_expression: str | None = Field(default=None, max_length=120)
    is_paused: bool | None = None


def _schedule_json(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "next_trigger_at": stamp(entry["next_trigger_at"]),
        "last_triggered_at": stamp(entry["last_triggered_at"]),
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
    return {"schedule_id": schedule_id, "executions": [_run_json(run) for run in runs]}


def _run_json(run: LifeRunRecord) -> dict[str, Any]:
    """One run of the execution log; its output masked (a persona's words may quote a caller's number)."""
    return {
        "triggered_at": stamp(run.triggered_at),
        "finished_at": stamp(run.finished_at),
        "slot": stamp(run.slot),
        "status": run.status,
        "output_summary": MASK(run.output[:500]),
        "process_id": run.process_id,
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
    texts = [MASK(e.text) for e in entries]  # what a persona wrote may quote a caller's number
    markdown = f"# {persona.name}'s journal, {day}\n\n" + "\n\n".join(texts) if entries else ""
    return {
        "persona": persona.name,
        "date": day,
        "entries": [{"created_at": stamp(e.created_at), "text": text} for e, text in zip(entries, texts, strict=True)],
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
                "text": MASK(p.text),
                "status": p.status,
                "delivered_to": [t for t in p.delivered_targets.split(",") if t],
                "pending": [t for t in p.pending_targets.split(",") if t],
                "attempts": p.attempts,
                "last_error": p.last_error or None,
                "created_at": stamp(p.created_at),
                "delivered_at": stamp(p.delivered_at),
            }
            for p in found
        ]
    }
    if total is None:
        return shown
    return {**shown, **page_of(shown["posts"], total, offset or 0)}


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
    items = [{"persona": r.persona, "activity": r.activity, **_run_json(r)} for r in found]
    return page_of(items, total, offset)


@router.get("/api/personas/{name}/journal/days")
async def journal_days(request: Request, gateway: GatewayDep, name: str) -> dict[str, Any]:
    """The days a persona wrote in its journal, newest first (the last 30), with their entry counts."""
    persona = gateway.catalog.get(name)
    store = await gateway.store()
    days = await store.journal_days(persona.name)
    return {"persona": persona.name, "days": [{"date": day, "entries": n} for day, n in days]}

"""Kept conversations on the panel's API: a page of them by persona, status and caller, one turn by turn
(messages, tool calls, timing, tokens, cost, cut-off replies), the audited reveal of a caller's number,
ending a live one, and the audit log."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from troupe.control_panel.answers import (
    PAGE_MAX,
    NotFound,
    Offset,
    Search,
    Unprocessable,
    page_of,
    principal_of,
    stamp,
)
from troupe.core.logs import MASK, mask_caller
from troupe.integrations.door import Gateway, GatewayDep
from troupe.store import SessionRecord

router = APIRouter()
log = logging.getLogger(__name__)


def _conversation_json(row: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": row.id,
        "caller": mask_caller(row.caller_id),
        "persona": row.persona,
        "status": row.status,
        "turns": row.turns,
        "started_at": stamp(row.started_at),
        "last_active_at": stamp(row.last_active_at),
        "ended_at": stamp(row.ended_at),
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
                "turn_id": m.turn_id, "at": stamp(t.at if t else m.created_at), "messages": [], "has_reply": False,
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
            "interrupted": m.interrupted, "created_at": stamp(m.created_at),
        })  # fmt: skip
    for turn in turns:
        del turn["has_reply"]
    kept = [t for t in figures if t.turn_id not in {turn["turn_id"] for turn in turns}]
    for t in kept:  # a turn that failed before any message was kept still shows, with its error
        turns.append({"turn_id": t.turn_id, "at": stamp(t.at), "messages": [], "ttft_ms": t.ttft_ms,
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
    actor, role = principal_of(request)
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
    items = [{"at": stamp(a.at), "actor": a.actor, "role": a.role, "action": a.action, "subject": a.subject,
              "detail": a.detail} for a in found]  # fmt: skip
    return page_of(items, total, offset)

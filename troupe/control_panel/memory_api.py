"""Memory on the panel's API: a persona's by layer with its core blocks, what troupe knows of one caller
(with where each piece came from), and forgetting a caller everywhere (audited)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from troupe.control_panel.answers import (
    OFFSET_MAX,
    NotFound,
    Unprocessable,
    principal_of,
    stamp,
)
from troupe.core.logs import MASK, mask_caller
from troupe.integrations.door import GatewayDep
from troupe.store import SELF, CallerRecord, MemoryBlockRow, MemoryRecord, Store
from troupe.store.memory import LAYERS

router = APIRouter()


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
        "created_at": stamp(memory.created_at),
        "superseded_by": memory.superseded_by,
        "superseded_at": stamp(memory.superseded_at),
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
        "first_seen_at": stamp(row.first_seen_at) if row else None,
        "last_seen_at": stamp(row.last_seen_at) if row else None,
        "last_spoke_with": known.last_persona,
        "counts": {**known.counts, "core_blocks": len(known.blocks)},
        "profile": {"live": [_memory_json(m) for m in profile if m.superseded_by is None], "history": history},
        "episodes": [_memory_json(m) for m in episodes],
        "knowledge": [_memory_json(m) for m in knowledge],
        "core_blocks": [
            {"persona": b.persona, "content": MASK(b.content), "updated_at": stamp(b.updated_at)} for b in known.blocks
        ],
    }


@router.delete("/api/callers/{caller}")
async def forget_caller(request: Request, gateway: GatewayDep, caller: CallerId) -> dict[str, Any]:
    """Delete a person's data everywhere (an operator's action; the orchestrator records it as the event
    `caller.forgotten`): their live sessions end unsummarised, and what the store held of them goes."""
    if await _known_of(await gateway.store(), caller) is None:
        raise NotFound("troupe knows nothing of that caller.", param="caller")
    deleted = await gateway.orchestrator.forget_caller.remote(caller)
    actor, role = principal_of(request)
    counts = ", ".join(f"{n} {kind}" for kind, n in deleted.items() if n)
    await (await gateway.store()).audit(actor, role, "forget", mask_caller(caller) or "", detail=counts)
    for persona in gateway.catalog:
        gateway.client.forget(caller, persona.name)  # the door's copies of their sessions go too
    return {"caller": mask_caller(caller), "deleted": deleted}

"""Prompt assembly: a persona's layers, its team, what it remembers and what it has lived through,
fitted to the persona's token budget (layers always; memories and life digest as room allows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from troupe.core.chat import ChatMessage, estimate_tokens
from troupe.core.persona_file import PersonaCatalog, PersonaDef


class PromptContext(BaseModel):
    model_config = ConfigDict(frozen=True)

    caller_id: str | None = None
    caller_name: str | None = None
    memories: tuple[str, ...] = ()  # the newest summaries of past conversations with the caller, newest first
    caller_block: str = ""  # the persona's core block about the caller: always in the prompt
    persona_block: str = ""  # and about itself
    life_digest: tuple[str, ...] = ()  # most recent first
    now: datetime | None = None
    client_system: str | None = None


CORE_BLOCK_CHARS = 1200  # a core block's most: it is in every prompt
RECALLED = "# What you remember that may bear on this"


def recalled_section(memories: Sequence[str], room_tokens: int) -> str:
    """The memories recalled for a turn's latest words, best first, as many as fit in `room_tokens`."""
    kept, _ = _fit(memories, room_tokens, limit_each=200)
    return RECALLED + "\n" + "\n".join(f"- {m}" for m in kept) if kept else ""


class PromptReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    total_tokens: int
    budget: int
    layer_tokens: dict[str, int]
    dropped_memories: int = 0
    dropped_digest: int = 0


def _fit(lines: Sequence[str], room: int, limit_each: int = 400) -> tuple[list[str], int]:
    kept: list[str] = []
    used = 0
    for line in lines:
        text = line.strip()
        if len(text) > limit_each * 4:
            text = text[: limit_each * 4] + "..."
        cost = estimate_tokens(text) + 2
        if used + cost > room:
            break
        kept.append(text)
        used += cost
    return kept, used


def build_system_prompt(
    persona: PersonaDef, ctx: PromptContext, catalog: PersonaCatalog | None = None
) -> tuple[str, PromptReport]:
    parts = [f"# {layer.name.title()}\n{layer.text}" for layer in persona.layers]
    if catalog is not None and persona.team:
        roster = "; ".join(f"{m.name} ({m.role})" for m in catalog.team_of(persona.name))
        parts.append(f"# Your team\n{roster}")
    now = (ctx.now or datetime.now(UTC)).astimezone(ZoneInfo(persona.timezone))
    parts.append(f"# Now\nIt is {now:%A %d %B %Y, %H:%M} ({persona.timezone}).")
    if ctx.caller_id:
        who = f"{ctx.caller_name} ({ctx.caller_id})" if ctx.caller_name else ctx.caller_id
        parts.append(f"# Caller\nYou are talking with {who}.")
    if ctx.persona_block.strip():
        parts.append(f"# Your own notes\n{ctx.persona_block.strip()[:CORE_BLOCK_CHARS]}")
    if ctx.caller_block.strip():
        parts.append(f"# What you know about this caller\n{ctx.caller_block.strip()[:CORE_BLOCK_CHARS]}")
    if ctx.client_system:
        parts.append(f"# Notes from the platform\n{ctx.client_system.strip()[:2000]}")
    used = sum(estimate_tokens(p) for p in parts)
    room = max(0, persona.token_budget - used)
    memories, spent = _fit(ctx.memories, room // 2 if ctx.life_digest else room)
    if memories:
        parts.append("# Your last conversations with this caller\n" + "\n".join(f"- {m}" for m in memories))
    digest, _ = _fit(ctx.life_digest, room - spent)
    if digest:
        parts.append("# Lately\n" + "\n".join(f"- {d}" for d in digest))
    text = "\n\n".join(parts)
    report = PromptReport(
        total_tokens=estimate_tokens(text),
        budget=persona.token_budget,
        layer_tokens={layer.name: layer.token_estimate for layer in persona.layers},
        dropped_memories=len(ctx.memories) - len(memories),
        dropped_digest=len(ctx.life_digest) - len(digest),
    )
    return text, report


def transcript_window(messages: Sequence[ChatMessage], max_messages: int) -> tuple[ChatMessage, ...]:
    """The last `max_messages` messages, never starting with tool results cut off from their call."""
    window = list(messages[-max_messages:]) if max_messages > 0 else []
    while window and (window[0].role == "tool" or (window[0].role == "assistant" and window[0].tool_calls)):
        window.pop(0)
    return tuple(window)

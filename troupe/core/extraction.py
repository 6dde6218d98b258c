"""What a persona keeps from a conversation, as Mem0 keeps it: a summary (the episode) and facts about
the person as add / update / delete operations against what it already knows. The brief asks the
persona's model for JSON; the parser takes what it can from the reply, and a reply that is not JSON
is the summary alone (a small model, or one that ignored the format)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from troupe.core.chat import estimate_tokens

KNOWN_FACTS_TOKENS = 1500  # the share of the brief for what is already known
TRANSCRIPT_TOKENS = 3000  # and for the conversation itself (its end, when longer)
MAX_OPERATIONS = 12


@dataclass(frozen=True)
class Known:
    id: int
    fact: str
    when: str  # the day it was learnt


@dataclass(frozen=True)
class Operation:
    op: Literal["add", "update", "delete"]
    fact: str = ""
    id: int | None = None  # the known fact it updates or deletes
    importance: float = 0.5


@dataclass(frozen=True)
class Extraction:
    summary: str
    operations: tuple[Operation, ...] = field(default=())


def brief(caller: str, persona: str, known: Sequence[Known], transcript: str) -> str:
    """The extraction prompt, within its token budget: the newest known facts, the conversation's end."""
    lines: list[str] = []
    used = 0
    for fact in known:
        line = f'{{"id": {fact.id}, "fact": {json.dumps(fact.fact)}, "learnt": "{fact.when}"}}'
        used += estimate_tokens(line)
        if used > KNOWN_FACTS_TOKENS:
            break
        lines.append(line)
    text = transcript.strip()
    if estimate_tokens(text) > TRANSCRIPT_TOKENS:
        text = "…" + text[-TRANSCRIPT_TOKENS * 4 :]
    return (
        f"Summarise this conversation you ({persona}) just had with {caller} for your own memory, and keep the "
        "facts about them worth knowing next time, against what you already know about them.\n"
        "Reply with JSON only, in this shape:\n"
        '{"summary": "two or three sentences for your own memory: who they are, what they wanted, what you '
        'promised", "facts": [{"op": "add", "fact": "a durable fact about them, one sentence, naming them as '
        '\\"the caller\\"", "importance": 0.0-1.0}, {"op": "update", "id": <known id>, "fact": "the corrected '
        'fact"}, {"op": "delete", "id": <known id>}]}\n'
        "Facts are durable things about the person: name, family, role, preferences, dislikes, commitments, "
        "deadlines. Update a known fact that changed; delete one that is no longer true; add only what is new. "
        "No facts: an empty list.\n\n"
        "What you know:\n" + ("\n".join(lines) if lines else "(nothing yet)") + "\n\nThe conversation:\n" + text
    )


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse(reply: str, known_ids: set[int]) -> Extraction:
    """The summary and the valid operations of a reply; updates and deletes of unknown ids are dropped."""
    found = _OBJECT.search(reply or "")
    data: Any = None
    if found:
        try:
            data = json.loads(found.group(0))
        except ValueError:
            data = None
    if not isinstance(data, dict):
        return Extraction(summary=(reply or "").strip())
    operations: list[Operation] = []
    for item in data.get("facts") or []:
        operation = _operation(item, known_ids)
        if operation is not None:
            operations.append(operation)
    return Extraction(summary=str(data.get("summary") or "").strip(), operations=tuple(operations[:MAX_OPERATIONS]))


def _operation(item: Any, known_ids: set[int]) -> Operation | None:
    if not isinstance(item, dict):
        return None
    op = str(item.get("op", "add")).lower()
    fact = str(item.get("fact") or "").strip()[:500]
    target = item.get("id")
    target = int(target) if isinstance(target, int | float | str) and str(target).isdigit() else None
    importance = _importance(item.get("importance"))
    if op == "add" and fact:
        return Operation("add", fact=fact, importance=importance)
    if op == "update" and fact and target in known_ids:
        return Operation("update", fact=fact, id=target, importance=importance)
    if op == "delete" and target in known_ids:
        return Operation("delete", id=target)
    return None


def _importance(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.5
    if number > 1:  # a 1-10 or 1-5 scale
        number = number / 10 if number > 5 else number / 5
    return min(1.0, max(0.0, number))

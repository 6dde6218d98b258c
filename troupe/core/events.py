"""What each event of the company's live feed is about, so the panel can group and filter it: pool
churn (warm session actors coming and going) apart from conversations, life, processes and audited
actions, and failures marked so they stand out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Group = Literal["conversation", "life", "process", "pool", "audit"]
GROUPS: tuple[Group, ...] = ("conversation", "life", "process", "pool", "audit")
POOL = "pool"  # the agent a warm session actor has before it binds a caller
FAILURES = frozenset({"process.failed", "process.died", "process.restart_failed", "callback.failed", "life.failed"})


def group_of(event_type: str, data: Mapping[str, Any]) -> Group:
    """The feed's group of an event, by its type (and, for processes, whose it is)."""
    family = event_type.partition(".")[0]
    if family in ("session", "tool", "callback", "turn"):
        return "conversation"
    if family in ("life", "schedule"):
        return "life"
    if family in ("caller", "audit"):
        return "audit"
    return "pool" if data.get("agent") == POOL else "process"


def level_of(event_type: str) -> Literal["error", "info"]:
    return "error" if event_type in FAILURES else "info"

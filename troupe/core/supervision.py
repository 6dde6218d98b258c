"""Supervision policy maths: what to do when a supervised actor dies.

Erlang/OTP style: restart with exponential backoff while restarts in the window stay under the limit;
past it, give up and escalate. `stop` leaves the child down; `restart_all` restarts its siblings too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["restart", "stop", "escalate", "restart_all"]
Action = Literal["restart", "restart_all", "stop", "escalate"]


@dataclass(frozen=True)
class Policy:
    strategy: Strategy = "restart"
    max_restarts: int = 3
    window_s: float = 60.0
    backoff_s: float = 0.2
    backoff_max_s: float = 10.0


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    reason: str = ""


def recent_restarts(history: Sequence[float], now: float, window_s: float) -> int:
    return sum(1 for t in history if now - t < window_s)


def decide(policy: Policy, history: Sequence[float], now: float) -> Decision:
    """Decide for a child that just died. `history` holds the monotonic times of its earlier restarts."""
    if policy.strategy == "stop":
        return Decision("stop", reason="policy is stop")
    if policy.strategy == "escalate":
        return Decision("escalate", reason="policy is escalate")
    recent = recent_restarts(history, now, policy.window_s)
    if recent >= policy.max_restarts:
        return Decision(
            "escalate",
            reason=f"{recent} restarts within {policy.window_s:g}s reached the limit of {policy.max_restarts}",
        )
    delay = min(policy.backoff_max_s, policy.backoff_s * (2**recent)) if recent else 0.0
    action: Action = "restart_all" if policy.strategy == "restart_all" else "restart"
    return Decision(action, delay_s=delay, reason=f"restart {recent + 1} of {policy.max_restarts}")

"""Typed messages passed between actors and to the door: frozen pydantic models, never bare dicts."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from troupe.core.chat import ChatMessage, ToolCall, ToolSpec, Usage

ProcessKind = Literal["orchestrator", "persona", "session", "life_loop", "task", "local_model"]
ProcessStatus = Literal["pending", "running", "completed", "failed"]


def new_process_id() -> str:
    """8 hex characters, as the contract's process ids are."""
    return secrets.token_hex(4)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class ProcessMetrics(_Frozen):
    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    estimated_cost: float = 0.0
    cost_known: bool = True  # False once any call used a model missing from the pricing table
    tokens_estimated: bool = False  # True once any call's usage was counted locally

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def plus(self, delta: MetricsDelta) -> ProcessMetrics:
        return ProcessMetrics(
            input_tokens=self.input_tokens + delta.input_tokens,
            output_tokens=self.output_tokens + delta.output_tokens,
            llm_calls=self.llm_calls + delta.llm_calls,
            tool_calls=self.tool_calls + delta.tool_calls,
            estimated_cost=round(self.estimated_cost + delta.cost_usd, 8),
            cost_known=self.cost_known and delta.cost_known,
            tokens_estimated=self.tokens_estimated or delta.tokens_estimated,
        )


class MetricsDelta(_Frozen):
    """What one piece of work adds to a process's metrics; reported to the orchestrator off the hot path."""

    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    tokens_estimated: bool = False

    def plus(self, other: MetricsDelta) -> MetricsDelta:
        return MetricsDelta(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            llm_calls=self.llm_calls + other.llm_calls,
            tool_calls=self.tool_calls + other.tool_calls,
            cost_usd=self.cost_usd + other.cost_usd,
            cost_known=self.cost_known and other.cost_known,
            tokens_estimated=self.tokens_estimated or other.tokens_estimated,
        )


class ProcessInfo(_Frozen):
    """One row of the registry: every actor (and every delegated task) is a process."""

    id: str
    kind: ProcessKind
    agent: str
    name: str = ""
    task: str = ""
    status: ProcessStatus = "pending"
    parent_id: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    restarts: int = 0
    error: str | None = None
    metrics: ProcessMetrics = ProcessMetrics()

    @property
    def duration_ms(self) -> int:
        end = self.ended_at or utcnow()
        return max(0, int((end - self.started_at).total_seconds() * 1000))


class SessionInfo(_Frozen):
    caller_id: str
    process_id: str
    agent: str
    status: ProcessStatus
    started_at: datetime
    last_active_at: datetime
    turns: int = 0
    session_id: str = ""  # the kept conversation's id: the panel's handle on it (its caller is masked)


class DoorName(_Frozen):
    """A door replica by its Ray actor name, which a session looks up only to ask whether that replica
    lives. Not its handle: unpickling a Serve replica's handle makes the process import Ray Serve
    (about 0.5 s of CPU), and every session actor would, at its first turn."""

    name: str
    namespace: str


class TurnRequest(_Frozen):
    """One caller turn. `messages` is what the client sent (OpenAI style); the session keeps its own
    durable transcript and uses the client's last user message (or tool results) as the new input."""

    caller_id: str
    persona: str
    messages: tuple[ChatMessage, ...]
    request_id: str = Field(default_factory=lambda: f"req-{time.time_ns()}")
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    client_tools: tuple[ToolSpec, ...] = ()
    known: tuple[str, int] | None = None  # the door's copy of the session: its context and version
    trace: dict[str, str] = Field(default_factory=dict)  # W3C trace context of the door's span (tracing.py)


class Allowance(_Frozen):
    """What a piece of work may still spend: its persona's budget and, for a caller's session, the
    session's own (0 means none)."""

    persona: str
    persona_budget: float
    persona_spent: float = 0.0
    session_budget: float = 0.0
    session_spent: float = 0.0


class TurnPlan(_Frozen):
    """A turn assembled by the caller's session for the door to run: the prompt and history, the
    persona's own tools (which still run in the session), and what the turn may spend.

    What the door already holds is left out, so a turn moves a few hundred bytes rather than the whole
    prompt: the system prompt and tools come once per `context` (they change when the persona's
    memories of the caller do), and the transcript window only when the door's copy is not at
    `version` (then it is its copy plus `input`)."""

    turn_id: str
    session_id: str
    input: tuple[ChatMessage, ...] = ()  # the caller's new messages, as the session took them
    persona: str
    model_name: str
    context: str
    version: int  # of the session's transcript, with this turn's input in it
    system: str | None = None  # None: the door's, of `context`
    own_tools: tuple[ToolSpec, ...] | None = None  # None: the door's, of `context`
    window: tuple[ChatMessage, ...] | None = None  # None: the door's copy plus `input`
    built: bool = False  # built by the door from its copy, not prepared: `version` is the copy's
    temperature: float | None = None
    max_iterations: int = 4
    allowance: Allowance


class TurnResult(_Frozen):
    """What the door hands back to the session when a turn ends: the new transcript messages, what
    they cost, and the failure, if any."""

    turn_id: str
    new_messages: tuple[ChatMessage, ...] = ()
    delta: MetricsDelta = MetricsDelta()
    error_code: str | None = None
    error_text: str | None = None
    interrupted: bool = False  # the reply was cut off (the caller hung up, the model failed, a timeout)
    ttft_ms: int | None = None  # from the door taking the turn to its first content (None: none came)
    duration_ms: int = 0  # from the door taking the turn to its end
    # a turn the door built from its copy of the session, without `prepare`: whose it is, its input, and
    # the version of the transcript it was built on
    session_id: str = ""
    input: tuple[ChatMessage, ...] = ()
    base_version: int | None = None
    trace: dict[str, str] = Field(default_factory=dict)  # W3C trace context of the door's turn span


class TurnStats(_Frozen):
    """One turn as the store keeps it beside its messages, for the panel's conversation view and charts:
    who answered, how fast, what it cost and how it ended."""

    turn_id: str
    persona: str
    ttft_ms: int | None = None
    duration_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    interrupted: bool = False
    error_code: str | None = None

    @classmethod
    def of(cls, result: TurnResult, persona: str) -> TurnStats:
        d = result.delta
        return cls(
            turn_id=result.turn_id, persona=persona, ttft_ms=result.ttft_ms, duration_ms=result.duration_ms,
            input_tokens=d.input_tokens, output_tokens=d.output_tokens, tool_calls=d.tool_calls,
            cost_usd=d.cost_usd, interrupted=result.interrupted, error_code=result.error_code,
        )  # fmt: skip


class TurnAck(_Frozen):
    """The session kept a turn; what the door's copy needs to build the next one without `prepare`."""

    version: int
    context: str  # "" when the door's copy of the prompt is no longer the session's
    allowance: Allowance
    behind: bool = False  # the turn was built on an older transcript than the session's


class Delta(_Frozen):
    """Words of the reply, as the model streams them."""

    kind: Literal["delta"] = "delta"
    text: str


class ToolCalls(_Frozen):
    """The caller's own tools, for it to run (their results come with its next request)."""

    kind: Literal["tool_calls"] = "tool_calls"
    tool_calls: tuple[ToolCall, ...]


class Done(_Frozen):
    """The turn's end: why it finished, and what it used and cost."""

    kind: Literal["done"] = "done"
    finish_reason: str = "stop"
    usage: Usage = Usage()
    cost_usd: float = 0.0


class Failed(_Frozen):
    """The turn's end when it failed: what to tell the caller, with the error's code and HTTP status."""

    kind: Literal["error"] = "error"
    text: str
    code: str = "internal_error"
    status: int = 500


# What a turn streams back: deltas (and the caller's tool calls), then one Done or Failed.
TurnEvent = Delta | ToolCalls | Done | Failed


class ProcessCount(_Frozen):
    kind: str
    status: str
    count: int


class LifeRunCount(_Frozen):
    persona: str
    activity: str
    status: str  # completed, failed, skipped
    count: int


class LifeTime(_Frozen):
    persona: str
    activity: str
    seconds: float


class Timings(_Frozen):
    """Durations tallied into histogram buckets: `counts` has one more than `le`, past every bound."""

    le: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float


class OrchestratorStatus(_Frozen):
    """The orchestrator's snapshot of the company: what /metrics, /api/* and `troupe status` show."""

    status: str = "ok"
    uptime_s: float
    process_count: int  # running or pending
    session_count: int
    sessions_by_persona: dict[str, int] = {}  # live sessions of each persona
    pool_size: int
    lent_count: int = 0  # session actors lent to a door for one-turn sessions (not counted as sessions)
    personas: tuple[str, ...]
    executives: tuple[str, ...]
    active_personas: tuple[str, ...]  # executives whose life loop runs
    backend: str
    spend: dict[str, float]  # USD by persona, as budgets are checked
    budgets: dict[str, float]
    processes: tuple[ProcessCount, ...]
    restarts: dict[str, int]  # restarts of the live processes, by kind
    restarted: dict[str, int]  # restarts since this orchestrator started, by kind
    store_writes: Timings
    life_runs: tuple[LifeRunCount, ...]
    life_seconds: tuple[LifeTime, ...]
    startup_s: dict[str, float]  # start-up phases
    dedup_rows: dict[str, int] = {}  # rows of each de-duplication table, as last counted


class LifeRun(_Frozen):
    persona: str
    activity: str
    slot: datetime | None
    status: Literal["completed", "failed", "skipped"]
    output: str
    process_id: str | None = None
    triggered_at: datetime = Field(default_factory=utcnow)

"""Every Prometheus metric troupe exports, declared in one place with fixed label names.

Dashboards depend on these names; tests/unit/test_metrics.py pins them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from troupe.core.messages import OrchestratorStatus

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "troupe_http_requests",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "troupe_http_request_duration_seconds",
    "Time to the response's first byte, by route",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
TTFT = Histogram(
    "troupe_time_to_first_token_seconds",
    "Time from a completion request to its first content, by persona and door (completions, elevenlabs)",
    ["persona", "door"],
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
    registry=REGISTRY,
)
TOKENS = Counter("troupe_tokens", "Model tokens by persona and direction", ["persona", "direction"], registry=REGISTRY)
COST = Counter("troupe_cost_usd", "Estimated model cost in USD by persona", ["persona"], registry=REGISTRY)
MODEL_ERRORS = Counter(
    "troupe_model_errors", "Failed turns by persona and error code", ["persona", "code"], registry=REGISTRY
)
ACTIVE_SESSIONS = Gauge("troupe_active_sessions", "Sessions bound to a caller", registry=REGISTRY)
POOL_SIZE = Gauge("troupe_session_pool_size", "Warm session actors waiting for a caller", registry=REGISTRY)
LENT = Gauge(
    "troupe_session_actors_lent",
    "Session actors lent to a door for one-turn sessions (no caller id)",
    registry=REGISTRY,
)
PROCESSES = Gauge(
    "troupe_processes", "Processes in the registry by kind and status", ["kind", "status"], registry=REGISTRY
)
RESTARTS = Gauge("troupe_process_restarts", "Restarts so far of live processes, by kind", ["kind"], registry=REGISTRY)
LIFE_RUNS = Gauge(
    "troupe_life_activity_runs",
    "Life activities run since start, by persona, activity and status (completed, failed)",
    ["persona", "activity", "status"],
    registry=REGISTRY,
)
LIFE_SECONDS = Gauge(
    "troupe_life_activity_seconds",
    "Time spent in life activities since start, by persona and activity",
    ["persona", "activity"],
    registry=REGISTRY,
)
BUDGET = Gauge("troupe_persona_budget_usd", "Each persona's budget in USD", ["persona"], registry=REGISTRY)
SPENT = Gauge(
    "troupe_persona_spent_usd",
    "What each persona has spent in USD, as its budget is checked (kept in the store across restarts)",
    ["persona"],
    registry=REGISTRY,
)


class _OrchestratorTotals:
    """Counters and a histogram the orchestrator keeps (its own since it started), exported as their
    own types from its snapshot of the scrape's moment: restarts by kind, and its store writes' timings."""

    def __init__(self) -> None:
        self.snapshot: OrchestratorStatus | None = None

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "troupe_actor_restarts", "Actors restarted by their supervisor since the orchestrator started, by kind",
            labels=["kind"],
        )  # fmt: skip
        status = self.snapshot
        if status is None:
            yield restarts
            return
        # every kind alive is exported, at 0 until one restarts, so a rate sees the first restart
        kinds = {p.kind for p in status.processes} | set(status.restarted)
        for kind in sorted(kinds):
            restarts.add_metric([kind], status.restarted.get(kind, 0))
        yield restarts
        writes = HistogramMetricFamily(
            "troupe_store_write_seconds",
            "Time the orchestrator's writes to the store take (its batched process rows), failed ones too",
        )
        timings = status.store_writes
        cumulative, buckets = 0, []
        for bound, count in zip((*timings.le, float("inf")), timings.counts, strict=True):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        writes.add_metric([], buckets, timings.sum)
        yield writes
        rows = GaugeMetricFamily(
            "troupe_dedup_rows", "Rows in each de-duplication table (webhook events seen, call ids, articles read)",
            labels=["table"],
        )  # fmt: skip
        for table, count in sorted(status.dedup_rows.items()):
            rows.add_metric([table], count)
        yield rows


TOTALS = _OrchestratorTotals()
REGISTRY.register(TOTALS)

NAMES = {
    "troupe_http_requests_total": ("route", "method", "status"),
    "troupe_http_request_duration_seconds": ("route", "method"),
    "troupe_time_to_first_token_seconds": ("persona", "door"),
    "troupe_tokens_total": ("persona", "direction"),
    "troupe_cost_usd_total": ("persona",),
    "troupe_model_errors_total": ("persona", "code"),
    "troupe_active_sessions": (),
    "troupe_session_pool_size": (),
    "troupe_session_actors_lent": (),
    "troupe_processes": ("kind", "status"),
    "troupe_process_restarts": ("kind",),
    "troupe_life_activity_runs": ("persona", "activity", "status"),
    "troupe_life_activity_seconds": ("persona", "activity"),
    "troupe_persona_budget_usd": ("persona",),
    "troupe_persona_spent_usd": ("persona",),
    "troupe_actor_restarts_total": ("kind",),
    "troupe_store_write_seconds": (),
    "troupe_dedup_rows": ("table",),
}


def render(status: OrchestratorStatus) -> bytes:
    """The exposition text, with the gauges set from the orchestrator's snapshot of this moment."""
    ACTIVE_SESSIONS.set(status.session_count)
    POOL_SIZE.set(status.pool_size)
    LENT.set(status.lent_count)
    PROCESSES.clear()
    for p in status.processes:
        PROCESSES.labels(p.kind, p.status).set(p.count)
    RESTARTS.clear()
    for kind, count in status.restarts.items():
        RESTARTS.labels(kind).set(count)
    LIFE_RUNS.clear()
    runs = {(r.persona, r.activity, r.status): r.count for r in status.life_runs}
    for persona, activity, _ in runs:
        for outcome in ("completed", "failed"):  # a failure is a 0 until there is one, so it can be graphed
            LIFE_RUNS.labels(persona, activity, outcome).set(runs.get((persona, activity, outcome), 0))
    LIFE_SECONDS.clear()
    for t in status.life_seconds:
        LIFE_SECONDS.labels(t.persona, t.activity).set(round(t.seconds, 3))
    BUDGET.clear()
    SPENT.clear()
    for persona, budget in status.budgets.items():
        BUDGET.labels(persona).set(budget)
        SPENT.labels(persona).set(round(status.spend.get(persona, 0.0), 6))
    TOTALS.snapshot = status
    return generate_latest(REGISTRY)

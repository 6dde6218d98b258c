"""Dashboards depend on metric names and labels: this pins them."""

from prometheus_client.parser import text_string_to_metric_families

from troupe.control_panel import metrics
from troupe.core.messages import LifeRunCount, LifeTime, OrchestratorStatus, ProcessCount, Timings


def test_metric_names_and_labels_are_pinned():
    metrics.REQUESTS.labels("/v1/chat/completions", "POST", "200").inc()
    metrics.LATENCY.labels("/v1/chat/completions", "POST").observe(0.1)
    metrics.TTFT.labels("Tony", "completions").observe(0.2)
    metrics.TOKENS.labels("Tony", "input").inc(10)
    metrics.COST.labels("Tony").inc(0.01)
    metrics.MODEL_ERRORS.labels("Tony", "model_unavailable").inc()
    status = OrchestratorStatus(
        uptime_s=10.0,
        process_count=3,
        session_count=3,
        pool_size=2,
        personas=("Tony",),
        executives=("Tony",),
        active_personas=("Tony",),
        backend="fake",
        processes=(ProcessCount(kind="session", status="running", count=3),),
        restarts={"persona": 1},
        life_runs=(LifeRunCount(persona="Tony", activity="news", status="completed", count=2),),
        life_seconds=(LifeTime(persona="Tony", activity="news", seconds=1.5),),
        budgets={"Tony": 5.0},
        spend={"Tony": 1.25},
        restarted={"persona": 2},
        store_writes=Timings(le=(0.01, 0.1), counts=(3, 1, 1), sum=2.5),
        startup_s={},
        dedup_rows={"seen_events": 7},
    )
    text = metrics.render(status).decode()
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen.setdefault(sample.name, set()).update(k for k in sample.labels if k != "le")
    for name, labels in metrics.NAMES.items():
        sample = name if name in seen else name.removesuffix("_total")
        if name.endswith("_seconds"):
            sample = name + "_count"
        assert sample in seen or name in seen, name
        assert seen.get(sample, seen.get(name)) == set(labels), name
    assert "troupe_active_sessions 3.0" in text
    assert 'troupe_life_activity_runs{activity="news",persona="Tony",status="completed"} 2.0' in text
    assert 'troupe_life_activity_runs{activity="news",persona="Tony",status="failed"} 0.0' in text
    assert 'troupe_persona_spent_usd{persona="Tony"} 1.25' in text
    assert 'troupe_actor_restarts_total{kind="persona"} 2.0' in text
    assert 'troupe_actor_restarts_total{kind="session"} 0.0' in text  # a kind alive that never restarted
    assert 'troupe_dedup_rows{table="seen_events"} 7.0' in text
    assert 'troupe_store_write_seconds_bucket{le="0.1"} 4.0' in text and "troupe_store_write_seconds_count 5.0" in text

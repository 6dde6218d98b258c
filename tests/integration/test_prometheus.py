"""A real Prometheus scrapes a real troupe (with the example config in deploy/prometheus/, an operator
key as its bearer token): after some turns, errors, life runs and a restart, every PromQL expression
of the Grafana dashboard (deploy/grafana/troupe.json) returns data, and every alert rule evaluates."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
import yaml
from pydantic import SecretStr

from tests.integration.conftest import make_settings
from troupe.app import Gateway, create_app
from troupe.testing.fake_openai import FakeOpenAIServer
from troupe.testing.loopback import free_port, serving

PROMETHEUS = Path("/usr/bin/prometheus")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OPERATOR_KEY = "prometheus-operator-key-0123456789"
CLIENT_KEY = "voice-app-client-key-0123456789"
# what Grafana would put in for the dashboard's variables: every persona and door, a rate window
VARIABLES = {"$persona": ".*", "$door": ".*", "$__rate_interval": "1m"}

needs_prometheus = pytest.mark.skipif(
    not PROMETHEUS.exists(), reason="needs Prometheus at /usr/bin/prometheus (apt-get install prometheus)"
)


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the dashboard's panels (rows' nested panels too), variables filled in."""
    dashboard = json.loads((DEPLOY / "grafana" / "troupe.json").read_text())
    queries = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not fill in: {expr}"
            queries.append(expr)
    return queries


def prometheus_config(tmp: Path, target: str) -> Path:
    """deploy/prometheus/prometheus.yml pointed at this troupe, scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    (job,) = config["scrape_configs"]
    key_file = tmp / "troupe.key"
    key_file.write_text(OPERATOR_KEY)
    job["authorization"]["credentials_file"] = str(key_file)
    job["static_configs"] = [{"targets": [target]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, root: str) -> None:
        self.root = root

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.root}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        found = self.query(expr)
        return float(found[0]["value"][1]) if found else math.nan


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus (a child of this test, with its own data directory) on a config made by `start`."""
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> Prometheus:
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={prometheus_config(tmp_path, target)}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{root}/-/ready", timeout=1).status_code == 200:
                    return Prometheus(root)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("Prometheus did not become ready in 20 s")

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def eventually(check: Any, within: float) -> Any:
    """Poll `check` (returns a falsy value or raises AssertionError while not yet) until it passes."""
    deadline = time.monotonic() + within
    while True:
        try:
            found = check()
            if found:
                return found
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.5)


def turns(door: str) -> None:
    """Turns as several personas and callers, streamed and not, through both doors."""
    client = openai.OpenAI(base_url=f"{door}/v1", api_key=CLIENT_KEY, max_retries=0)
    for persona, caller in (("tony", "caller-1"), ("maya", "caller-2"), ("jordan", None)):
        reply = client.chat.completions.create(
            model=persona, messages=[{"role": "user", "content": "How are we doing?"}], user=caller
        )
        assert reply.choices[0].message.content
    stream = client.chat.completions.create(
        model="maya", messages=[{"role": "user", "content": "And cash?"}], user="caller-2", stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    voice = openai.OpenAI(base_url=f"{door}/v1/elevenlabs-llm", api_key=CLIENT_KEY, max_retries=0)
    spoken = voice.chat.completions.create(model="riley", messages=[{"role": "user", "content": "Hi!"}])
    assert spoken.choices[0].message.content


def errors(door: str, upstream: FakeOpenAIServer) -> None:
    """An unknown persona (404), a body that is not JSON (400) and a turn the model fails (503)."""
    client = openai.OpenAI(base_url=f"{door}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    assert httpx.post(f"{door}/v1/chat/completions", content=b"{not json", headers=headers).status_code == 400
    upstream.behaviour.fail_status = 500
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="alex", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503
    upstream.behaviour.fail_status = None


def trigger(door: str, activity: str) -> str:
    answer = httpx.post(
        f"{door}/internal/life/trigger",
        params={"activity": activity, "persona": "tony"},
        headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["result"])


def rules_evaluated(prom: Prometheus) -> bool:
    groups = httpx.get(f"{prom.root}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {"TroupeModelFailing", "TroupePoolExhausted", "TroupeRestartStorm", "TroupeBudgetSpent"} <= {
        r["name"] for r in rules
    }
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    return True


@needs_prometheus
def test_every_dashboard_query_and_alert_works_against_a_scraped_troupe(
    start_runtime: Any, tmp_path: Path, prometheus: Any
) -> None:
    goals = tmp_path / "goals"
    goals.mkdir()
    (goals / "tony.yaml").write_text("mission: Ship.\nobjectives:\n  - title: X\n    key_results: oops\n")
    with FakeOpenAIServer() as upstream:
        settings = make_settings(
            tmp_path,
            model_backend="endpoint",
            openai_base_url=upstream.base_url,
            openai_api_key="test-key",
            model="gpt-4o-mini",  # priced: the turns cost something
            model_max_retries=0,
            goals_dir=goals,
            api_keys=SecretStr(f"prometheus:operator:{OPERATOR_KEY},app:client:{CLIENT_KEY}"),
        )
        runtime = start_runtime(settings)
        app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
        with serving(app) as door:
            assert httpx.get(f"{door}/metrics").status_code == 401  # Prometheus needs its key
            prom = prometheus(door.removeprefix("http://"))
            # a crash: Tony's life loop dies and its supervisor restarts it
            ray.kill(ray.get_actor("life-tony", namespace=settings.namespace), no_restart=True)
            # a rate sees what changed between two scrapes: a first round of turns makes the series, and
            # once Prometheus has them, a second round is what the panels show
            turns(door)
            eventually(lambda: len(prom.query("troupe_time_to_first_token_seconds_count")) >= 4, within=10)
            turns(door)
            errors(door, upstream)
            assert eventually(lambda: trigger(door, "journal"), within=30)  # once the life loop is back
            assert trigger(door, "goals").startswith("Failed")  # its goals file is malformed

            queries = dashboard_queries()

            def all_answer() -> bool:
                empty = [q for q in queries if not any(math.isfinite(float(s["value"][1])) for s in prom.query(q))]
                assert not empty, "no data for:\n" + "\n".join(empty)
                return True

            eventually(all_answer, within=30)
            # what the panels show is what happened
            assert prom.value('max(troupe_actor_restarts_total{kind="life_loop"})') >= 1
            assert prom.value('max(troupe_life_activity_runs{activity="goals",status="failed"})') == 1
            assert prom.value('max(troupe_life_activity_runs{activity="journal",status="completed"})') == 1
            assert prom.value('sum(troupe_model_errors_total{persona="Alex",code="model_unavailable"})') >= 1
            assert prom.value('sum(troupe_time_to_first_token_seconds_count{door="elevenlabs"})') >= 2
            assert prom.value('sum(troupe_http_requests_total{status="400"})') >= 1
            assert prom.value('max(troupe_persona_spent_usd{persona="Maya"})') > 0
            assert prom.value("max(troupe_store_write_seconds_count)") > 0

            eventually(lambda: rules_evaluated(prom), within=10)
            # nothing here should page anyone: one failed turn is not a failing model
            alerts = httpx.get(f"{prom.root}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            assert [a for a in alerts if a["labels"]["alertname"] != "TroupePoolExhausted"] == []


def test_dashboard_variables_are_the_ones_the_queries_use() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "troupe.json").read_text())
    names = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard["panels"]))) - {"__rate_interval"}
    assert used <= names, used - names
    assert {"DS_PROMETHEUS", "persona", "door"} <= names

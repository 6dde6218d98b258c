"""One turn's trace across its processes on a real Ray: the door, the session actor, the model, the
store, a tool and the Task actor it spawns, received by an OTLP/HTTP collector on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.integration.conftest import make_settings, write_script
from troupe.app import Gateway, create_app
from troupe.clients import tracing as exporting
from troupe.runtime import Runtime
from troupe.testing.loopback import serving

CALLER = "trace-tester-7"
SAID = "Please delegate the API review, my number is +14155550199"


@dataclass(frozen=True)
class Received:
    """One span as the collector got it."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    process: dict[str, Any]  # its resource's attributes: which troupe process sent it


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class Collector:
    """An OTLP/HTTP traces receiver (`POST /v1/traces`, protobuf), keeping what it receives."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/traces", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        received = [
            Received(
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_id=span.parent_span_id.hex(),
                name=span.name,
                kind=span.kind,
                attributes={a.key: _value(a.value) for a in span.attributes},
                process={a.key: _value(a.value) for a in resource_spans.resource.attributes},
            )
            for resource_spans in export.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self.spans.extend(received)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def named(self, name: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    collector = Collector()
    with serving(collector.app) as url:
        yield collector, url
        exporting.shutdown()  # this (the door's) process stops tracing: later tests here send nowhere


@pytest.fixture
def runtime(collector: tuple[Collector, str], start_runtime: Any, tmp_path: Path) -> Runtime:
    """A troupe whose every process sends its spans to the collector (stopped before the collector is)."""
    script = write_script(
        tmp_path / "script.json",
        [
            {
                "when": "please delegate",
                "reply": {
                    "tool_calls": [
                        {"name": "spawn_agent", "arguments": {"specialist": "Priya", "task": "Review the API design"}}
                    ]
                },
            },
            {"when": "", "reply": "Hello from the fake model."},
        ],
    )
    settings = make_settings(
        tmp_path,
        fake_script=script,
        otel_exporter_otlp_endpoint=collector[1],  # every actor is given these settings, on any node
        otel_bsp_schedule_delay=100,
    )
    return start_runtime(settings)


async def test_one_trace_follows_a_turn_that_spawns_a_specialist_through_every_process(
    runtime: Runtime, collector: tuple[Collector, str]
) -> None:
    spans, _ = collector
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    body = {"model": "tony", "stream": True, "user": CALLER, "messages": [{"role": "user", "content": SAID}]}
    with serving(app) as door:
        async with httpx.AsyncClient(base_url=door, timeout=60) as client:
            reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200
    chunks = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello from the fake model."

    expected = ("POST /v1/chat/completions", "turn", "session.prepare", "tool.spawn_agent", "task.run",
        "session.finish", "store.write")  # fmt: skip
    for _ in range(150):  # the door's and the session's spans leave in batches every 100 ms
        if all(spans.named(name) for name in expected) and len(spans.named("model.stream")) >= 3:
            break
        await asyncio.sleep(0.2)
    got = {name: spans.named(name) for name in (*expected, "model.stream")}
    assert all(got.values()), {name: len(found) for name, found in got.items()}

    (route,) = got["POST /v1/chat/completions"]
    # every hop is in the caller's one trace; only the session's row, written behind `bind` (reached
    # through the orchestrator's session_for, which carries no trace context), is a trace of its own
    others = [(s.name, s.attributes.get("db.operation.name")) for s in spans.spans if s.trace_id != route.trace_id]
    assert set(others) <= {("store.write", "open_session")}, others
    assert route.parent_id == "" and route.kind == 2  # SERVER: the trace starts at the door
    (turn,) = got["turn"]
    (prepare,) = got["session.prepare"]
    (tool,) = got["tool.spawn_agent"]
    (task,) = got["task.run"]
    (finish,) = got["session.finish"]
    assert turn.parent_id == route.span_id
    assert prepare.parent_id == turn.span_id and finish.parent_id == turn.span_id
    assert tool.parent_id == turn.span_id  # run by the session actor for the door's turn
    assert task.parent_id == tool.span_id  # through the orchestrator, to the Task actor it made
    by_parent = {s.parent_id: s for s in got["model.stream"]}
    door_models = [s for s in got["model.stream"] if s.parent_id == turn.span_id]
    assert len(door_models) == 2  # the call that asked for the tool, and the answer after it
    assert by_parent[task.span_id].attributes["troupe.persona"] == "Priya"
    assert all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in got["model.stream"])
    assert any(
        s.parent_id == finish.span_id and s.attributes["db.operation.name"] == "append" for s in got["store.write"]
    )

    # each hop from the process that did it
    door_pid, session_pid, task_pid = (s.process["process.pid"] for s in (route, prepare, task))
    assert door_pid == os.getpid() and len({door_pid, session_pid, task_pid}) == 3
    assert {s.process["troupe.process"] for s in (route, turn, *door_models)} == {"door"}
    assert {s.process["troupe.process"] for s in (prepare, tool, finish)} == {"session"}
    assert task.process["troupe.process"] == "task" and route.process["service.name"] == "troupe"
    # what the caller said and who they are stay out of the trace
    told = repr([(s.attributes, s.process) for s in spans.spans])
    assert CALLER not in told and "+14155550199" not in told and "API review" not in told

"""Tracing in one process: the trace context a message carries across Ray keeps the trace, the agent
loop's spans say what a model call used but never what was said, and with tracing off nothing is made."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, SpanKind

from tests.unit.test_agent import Memory, Replay, call
from troupe.actors.agent import AgentLoop, answer_once
from troupe.actors.tools import PersonaTools
from troupe.app import Gateway, create_app
from troupe.clients import tracing as exporting
from troupe.config.settings import Settings
from troupe.core import tracing
from troupe.core.chat import ChatMessage
from troupe.core.messages import Delta, Done, TurnEvent, TurnRequest, TurnResult
from troupe.core.persona_file import load_personas

PHONE = "+14155550123"
SECRET_WORDS = "my card number is 4242"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


def named(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


def test_the_context_a_message_carries_across_processes_keeps_the_trace(spans: InMemorySpanExporter) -> None:
    door = tracing.start("turn")
    request = TurnRequest(
        caller_id=PHONE, persona="Tony", messages=(ChatMessage(role="user", content="hi"),), trace=tracing.carrier(door)
    )
    assert request.trace["traceparent"].split("-")[1] == format(door.get_span_context().trace_id, "032x")
    # what Ray does to an actor call's arguments, and what the session does with it on the other side
    arrived: TurnRequest = pickle.loads(pickle.dumps(request))
    with tracing.span("session.prepare", parent=arrived.trace, kind=SpanKind.SERVER):
        with tracing.span("store.write"):
            pass
    result = TurnResult(turn_id="t1", trace=tracing.carrier(door))
    with tracing.span("session.finish", parent=pickle.loads(pickle.dumps(result)).trace):
        pass
    door.end()

    finished = spans.get_finished_spans()
    trace_ids = {s.context.trace_id for s in finished}
    assert trace_ids == {door.get_span_context().trace_id}
    door_id = door.get_span_context().span_id
    prepare = named(finished, "session.prepare")
    assert prepare.parent is not None and prepare.parent.span_id == door_id and prepare.parent.is_remote
    assert named(finished, "store.write").parent.span_id == prepare.context.span_id  # type: ignore[union-attr]
    assert named(finished, "session.finish").parent.span_id == door_id  # type: ignore[union-attr]


def test_a_message_from_an_untraced_process_starts_a_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    request = TurnRequest(caller_id=PHONE, persona="Tony", messages=())
    assert request.trace == {}
    with tracing.span("session.prepare", parent=request.trace):
        pass
    (prepare,) = spans.get_finished_spans()
    assert prepare.parent is None


async def test_model_and_tool_spans_say_what_was_used_never_what_was_said(spans: InMemorySpanExporter) -> None:
    memory = Memory()
    turn = tracing.start("turn")
    loop = AgentLoop(
        speaker="Tony",
        model=Replay([call("remember", fact=f"{PHONE} said {SECRET_WORDS}")], "Noted, thanks."),
        model_name="gpt-4o-mini",
        toolbox=PersonaTools(persona="Tony", allowed=["remember"], store=memory, subject=PHONE),
        trace=turn,
    )
    messages = (ChatMessage(role="system", content="You are Tony."), ChatMessage(role="user", content=SECRET_WORDS))
    with tracing.span("task.run"):  # the tool's span is a child of the current one, as in an actor
        outcome = await answer_once(loop, messages)
    turn.end()
    assert outcome.text == "Noted, thanks. "
    assert memory.entries  # the tool ran

    finished = spans.get_finished_spans()
    models = [s for s in finished if s.name == "model.stream"]
    assert len(models) == 2 and all(s.parent.span_id == turn.get_span_context().span_id for s in models)  # type: ignore[union-attr]
    assert [s.kind for s in models] == [SpanKind.CLIENT, SpanKind.CLIENT]
    first, second = (dict(s.attributes or {}) for s in models)
    assert first["gen_ai.request.model"] == "gpt-4o-mini" and first["troupe.persona"] == "Tony"
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"], first["troupe.tool_calls"]) == (
        100,
        5,
        1,
    )
    assert (second["gen_ai.usage.output_tokens"], second["troupe.tool_calls"]) == (10, 0)
    tool = named(finished, "tool.remember")
    assert tool.parent.span_id == named(finished, "task.run").context.span_id  # type: ignore[union-attr]
    said = " ".join(str(v) for s in finished for v in (s.attributes or {}).values())
    assert PHONE not in said and "4242" not in said and "card" not in said


async def test_a_model_call_cut_off_by_the_caller_is_interrupted_not_failed(spans: InMemorySpanExporter) -> None:
    loop = AgentLoop(speaker="Tony", model=Replay("one two three four"), model_name="m")
    events = loop.run((ChatMessage(role="user", content="hi"),)).__aiter__()
    assert isinstance(await anext(events), Delta)
    await events.aclose()  # the caller hung up
    (model,) = spans.get_finished_spans()
    assert model.attributes is not None and model.attributes["troupe.interrupted"] is True
    assert model.status.is_ok


async def test_with_tracing_off_nothing_is_made_or_carried() -> None:
    assert not tracing.active()
    assert tracing.start("turn") is INVALID_SPAN
    assert tracing.carrier() == {}
    with tracing.span("session.prepare", parent={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) as span:
        assert span is INVALID_SPAN
    assert tracing.span("a") is tracing.span("b")  # one shared no-op, nothing allocated per use
    loop = AgentLoop(speaker="Tony", model=Replay("fine"), model_name="m")
    assert (await answer_once(loop, (ChatMessage(role="user", content="hi"),))).text == "fine "


def test_exporter_settings_follow_opentelemetrys_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    settings = Settings(data_dir=tmp_path)
    assert exporting.traces_url(settings) == "http://collector:4318/v1/traces"
    assert settings.otel_service_name == "troupe"
    sampler = exporting.sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg)
    assert isinstance(sampler, ParentBased) and "TraceIdRatioBased{0.25}" in sampler.get_description()
    assert isinstance(exporting.sampler("traceidratio", 0.5), TraceIdRatioBased)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/custom")
    assert exporting.traces_url(Settings(data_dir=tmp_path)) == "http://other:4318/custom"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert exporting.traces_url(Settings(data_dir=tmp_path)) is None


def test_a_bad_sampler_name_stops_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER"):
        Settings(data_dir=tmp_path)


def test_without_an_endpoint_setup_leaves_tracing_off(tmp_path: Path) -> None:
    exporting.setup(Settings(data_dir=tmp_path), "door")
    assert not tracing.active()


class Sessions:
    """The door's session client, answering every turn with two words."""

    def __init__(self) -> None:
        self.requests: list[TurnRequest] = []

    async def turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        self.requests.append(request)
        yield Delta(text="Hello there.")
        yield Done()

    def forget(self, caller_id: str, persona: str) -> None:
        pass


@pytest.mark.parametrize("stream", [True, False])
async def test_the_completions_route_continues_the_callers_trace_and_ends_with_the_reply(
    spans: InMemorySpanExporter, tmp_path: Path, stream: bool
) -> None:
    settings = Settings(data_dir=tmp_path, insecure=True, model_backend="fake")
    sessions = Sessions()
    app = create_app(Gateway(settings, load_personas(settings.personas_dir), None, sessions))
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    headers = {"traceparent": f"00-{caller_trace}-b7ad6b7169203331-01", "X-Vapi-Caller-Phone": PHONE}
    body = {"model": "tony", "stream": stream, "messages": [{"role": "user", "content": SECRET_WORDS}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        reply = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert reply.status_code == 200 and "Hello there." in reply.text

    route = named(spans.get_finished_spans(), "POST /v1/chat/completions")
    assert route.kind == SpanKind.SERVER and format(route.context.trace_id, "032x") == caller_trace
    assert route.parent is not None and format(route.parent.span_id, "016x") == "b7ad6b7169203331"
    attributes = dict(route.attributes or {})
    assert attributes["http.response.status_code"] == 200 and attributes["troupe.persona"] == "Tony"
    assert PHONE not in str(attributes) and SECRET_WORDS not in str(attributes)
    # the turn the door runs is the route's child, in whatever process its session is
    (turn,) = sessions.requests
    assert turn.trace["traceparent"] == f"00-{caller_trace}-{format(route.context.span_id, '016x')}-01"


async def test_a_refused_request_ends_its_span_with_the_status(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, insecure=True, model_backend="fake")
    app = create_app(Gateway(settings, load_personas(settings.personas_dir), None, Sessions()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        body = {"model": "zed", "messages": [{"role": "user", "content": "hi"}]}
        reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 404
    route = named(spans.get_finished_spans(), "POST /v1/chat/completions")
    assert (route.attributes or {})["http.response.status_code"] == 404 and route.status.is_unset

"""Spans of a turn, and the W3C trace context (`traceparent`) that the messages crossing Ray carry.

Off until a process is given a tracer provider (`use`; `troupe.clients.tracing.setup` makes one when an
OTLP endpoint is configured): then every helper here returns at once, with no span and an empty carrier.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, TracerProvider

# the W3C trace context of a span in another process: {"traceparent": ..., "tracestate": ...}
Carrier = dict[str, str]

Parent = Span | Carrier | None  # a span of this process, a carrier from another, or the current span

_tracer: trace.Tracer | None = None
_OFF: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


def use(provider: TracerProvider | None) -> None:
    """Trace this process through `provider` (None: stop tracing)."""
    global _tracer
    _tracer = provider.get_tracer("troupe") if provider is not None else None


def active() -> bool:
    return _tracer is not None


def _context(parent: Parent) -> Context | None:
    if parent is None:
        return None  # the current span's
    if isinstance(parent, dict):
        return propagate.extract(parent) if parent else None
    return trace.set_span_in_context(parent)


def start(
    name: str, *, parent: Parent = None, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None
) -> Span:
    """A span the caller ends (`end`): for work that is not one block of a coroutine, such as a stream."""
    if _tracer is None:
        return INVALID_SPAN
    return _tracer.start_span(name, context=_context(parent), kind=kind, attributes=attributes)


def span(
    name: str, *, parent: Parent = None, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None
) -> AbstractContextManager[Span]:
    """A span current for a `with` block of a coroutine (never across a generator's `yield`: the block
    would leak its context to whoever iterates). An exception in the block is recorded on it."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, context=_context(parent), kind=kind, attributes=attributes)


def within(parent: Carrier | None) -> AbstractContextManager[Span]:
    """A `with` block run under another process's span: the spans it makes are that span's children."""
    if _tracer is None or not parent:
        return _OFF
    return trace.use_span(trace.get_current_span(propagate.extract(parent)))


def end(span: Span, error: BaseException | None = None) -> None:
    if not span.is_recording():
        return
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def failed(span: Span, code: str) -> None:
    """The work ended in a failure troupe reports (a `Failed`), not an exception."""
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, code))


def carrier(span: Span | None = None) -> Carrier:
    """The trace context of `span` (else of the current span), for a message that crosses Ray."""
    if _tracer is None:
        return {}
    out: Carrier = {}
    propagate.inject(out, context=trace.set_span_in_context(span) if span is not None else None)
    return out

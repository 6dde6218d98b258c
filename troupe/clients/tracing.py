"""Where this process's spans go: an OpenTelemetry SDK provider exporting OTLP/HTTP in batches, set up
once per process when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set; otherwise nowhere.

The exporter reads OpenTelemetry's other variables itself (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
_COMPRESSION, _CERTIFICATE) from each process's environment; the ones troupe's actors need on any node
come from Settings, which every actor is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from opentelemetry import trace

from troupe.config.settings import Settings
from troupe.core import tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None


def traces_url(settings: Settings) -> str | None:
    """OTLP/HTTP's traces URL, as the SDK builds it: the signal's own endpoint as given, else the base
    endpoint plus /v1/traces."""
    if settings.otel_sdk_disabled:
        return None
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


def sampler(name: str, ratio: float) -> Sampler:
    """OTEL_TRACES_SAMPLER's samplers (Settings checks the name)."""
    from opentelemetry.sdk.trace import sampling

    base = name.removeprefix("parentbased_")
    if base == "always_on":
        root: Sampler = sampling.ALWAYS_ON
    elif base == "always_off":
        root = sampling.ALWAYS_OFF
    else:
        root = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def setup(settings: Settings, role: str) -> None:
    """Trace this process (`role` names it: door, session, task...) if an endpoint is configured. Only
    the first call that finds one does anything; the rest cost an attribute check."""
    global _provider
    if _provider is not None:
        return
    url = traces_url(settings)
    if url is None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {"service.name": settings.otel_service_name, "troupe.process": role, "process.pid": os.getpid()}
    )
    provider = TracerProvider(
        resource=resource, sampler=sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg)
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=settings.otel_bsp_schedule_delay)
    )
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # libraries' own spans go there too, when none is set yet
    tracing.use(provider)
    _provider = provider
    log.info("traces go to %s", url.split("?", 1)[0])


async def flush() -> None:
    """Send this process's finished spans now: for a process about to be killed (a Task actor)."""
    if _provider is not None:
        await asyncio.to_thread(_provider.force_flush, 5000)


def shutdown() -> None:
    """Flush and stop tracing this process (tests; a later `setup` starts again)."""
    global _provider
    provider, _provider = _provider, None
    tracing.use(None)
    if provider is not None:
        provider.shutdown()

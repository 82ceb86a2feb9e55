"""OpenTelemetry spans for publish and consume, linked through W3C `traceparent`.

Nothing here costs anything unless a tracer provider is installed: `configure()` installs
one from config (OTLP/HTTP, console, or none), and tests may install their own.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from mesh.config import TracingSettings

# None until a provider is installed: then every span call below is skipped entirely.
_tracer: trace.Tracer | None = None


def use(provider: trace.TracerProvider | None) -> None:
    """Trace through `provider` (None: stop tracing). Tests install an in-memory one."""
    global _tracer
    _tracer = provider.get_tracer("trademaster.mesh") if provider is not None else None


def configure(settings: TracingSettings, service: str) -> TracerProvider | None:
    if settings.exporter == "none":
        return None
    exporter: SpanExporter
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter()
        processor: SimpleSpanProcessor | BatchSpanProcessor = SimpleSpanProcessor(exporter)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.endpoint or None)
        processor = BatchSpanProcessor(exporter)
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name or service})
    )
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    use(provider)
    return provider


def enabled() -> bool:
    return _tracer is not None


def publish_span(
    event_type: str, subject: str, event_id: str, correlation_id: str
) -> tuple[trace.Span, dict[str, str]]:
    """A PRODUCER span and the headers (traceparent, tracestate) that carry it."""
    assert _tracer is not None, "tracing.enabled() is checked first"
    span = _tracer.start_span(
        f"publish {event_type}",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject,
            "messaging.message.id": event_id,
            "messaging.message.conversation_id": correlation_id,
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier


def consume_span(
    event_type: str, subject: str, event_id: str, headers: Mapping[str, str] | None
) -> trace.Span | None:
    """A CONSUMER span whose parent is the publisher's span from `traceparent`.

    Not made current: the caller ends it (at ack) from wherever it handles the event."""
    if _tracer is None:
        return None
    return _tracer.start_span(
        f"process {event_type}",
        context=propagate.extract(dict(headers or {})),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.message.id": event_id,
        },
    )

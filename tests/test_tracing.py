from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mesh import tracing
from mesh.client import Mesh
from mesh.events import Event
from mesh.subscriber import Interest


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


async def test_consumer_span_is_a_child_of_the_publisher_span(
    mesh: Mesh, tag: str, spans: InMemorySpanExporter
) -> None:
    async with mesh.subscribe(Interest(symbol=tag)) as sub:
        event = Event(event_type="TRADE_EXECUTION", symbol=tag, payload={"qty": 5})
        await mesh.publish(event)
        d = await sub.next(timeout=10)
        assert d.headers["traceparent"].startswith("00-")
        await d.ack()
    published = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    consumed = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert len(published) == 1
    assert len(consumed) == 1
    p, c = published[0], consumed[0]
    assert p.name == "publish TRADE_EXECUTION"
    assert c.name == "process TRADE_EXECUTION"
    assert c.context.trace_id == p.context.trace_id
    assert c.parent is not None
    assert c.parent.span_id == p.context.span_id
    assert p.attributes is not None
    assert p.attributes["messaging.message.id"] == event.event_id

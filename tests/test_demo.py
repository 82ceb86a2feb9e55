from __future__ import annotations

import asyncio
from collections import Counter

from mesh.client import Mesh
from mesh.demo import SERVICES, Demo
from mesh.events import Event
from mesh.server import NatsServer
from tests.helpers import eventually


async def test_demo_services_publish_as_themselves_with_causation_chains(
    nats_server: NatsServer,
) -> None:
    seen: list[tuple[str, Event]] = []
    demo = Demo(nats_server.url, rate=400, seed=7, on_event=lambda s, e: seen.append((s, e)))
    task = asyncio.create_task(demo.run())
    try:
        await eventually(
            lambda: (
                set(demo.stats.published) == set(SERVICES)
                and any(e.event_type == "POSITION_UPDATE" for _, e in seen)
            ),
            30,
            "every service published and a fill produced a position update",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() or task.exception() is None
    for service, event in seen:
        assert event.source == service
    domains = Counter((s, Mesh().catalog.spec(e.event_type).domain) for s, e in seen)
    assert {s for s, _ in domains} == set(SERVICES)
    allowed = {
        "market-data": {"market"},
        "trading": {"order", "risk"},
        "portfolio": {"portfolio"},
        "agent": {"agent"},
        "notification": {"notification", "system"},
    }
    assert all(d in allowed[s] for s, d in domains)
    by_id = {e.event_id: e for _, e in seen}
    position = next(e for _, e in seen if e.event_type == "POSITION_UPDATE")
    cause = by_id.get(position.causation_id or "")
    assert cause is not None
    assert cause.event_type in ("ORDER_FILLED", "ORDER_PARTIAL_FILL")
    assert cause.correlation_id == position.correlation_id

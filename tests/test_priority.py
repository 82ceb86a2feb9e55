from __future__ import annotations

from mesh.catalog import Priority
from mesh.client import Mesh
from mesh.events import Event
from mesh.priority import PriorityLanes
from mesh.subscriber import Interest, Start
from tests.helpers import eventually


async def test_critical_overtakes_thousands_of_queued_lower_events(mesh: Mesh, tag: str) -> None:
    # Thousands of background and standard events are queued for the subscriber first.
    backlog = [
        Event(event_type=t, account=tag, payload={"i": i})
        for i in range(2500)
        for t in ("USER_NOTIFICATION", "PNL_CHANGE")
    ]
    await mesh.publish_many(backlog)
    async with mesh.subscribe(Interest(account=tag), start=Start.all()) as sub:
        first = await sub.next(timeout=10)
        assert first.priority in (Priority.BACKGROUND, Priority.STANDARD)
        # Wait until the subscriber holds a full window of lower events in its lanes.
        await eventually(
            lambda: sub.pending(Priority.BACKGROUND) + sub.pending(Priority.STANDARD) >= 1000,
            what="a full window of lower events queued in the subscriber",
        )
        critical = Event(event_type="MARGIN_CALL", account=tag, payload={"deficit": 5})
        await first.ack()
        await mesh.publish(critical)
        delivered_before_critical = 0
        while True:
            d = await sub.next(timeout=10)
            await d.ack()
            if d.event.event_type == "MARGIN_CALL":
                break
            delivered_before_critical += 1
        assert d.event.event_id == critical.event_id
        waiting = sub.pending(Priority.BACKGROUND) + sub.pending(Priority.STANDARD)
    # It overtook the queue: at most the few events handed out while it was in transit.
    assert waiting > 500
    assert delivered_before_critical < 100


def _drain(lanes: PriorityLanes[str]) -> list[str]:
    out = []
    while (item := lanes.get_nowait()) is not None:
        out.append(item)
    return out


def test_lanes_are_strict_by_priority() -> None:
    lanes: PriorityLanes[str] = PriorityLanes(burst=1000)
    for i in range(3):
        lanes.put(Priority.BACKGROUND, f"b{i}")
        lanes.put(Priority.STANDARD, f"s{i}")
        lanes.put(Priority.HIGH, f"h{i}")
    lanes.put(Priority.CRITICAL, "c0")
    assert _drain(lanes) == ["c0", "h0", "h1", "h2", "s0", "s1", "s2", "b0", "b1", "b2"]


def test_background_is_not_starved_forever_by_a_flood_of_high() -> None:
    lanes: PriorityLanes[str] = PriorityLanes(burst=10)
    lanes.put(Priority.BACKGROUND, "b0")
    for i in range(100):
        lanes.put(Priority.HIGH, f"h{i}")
    order = _drain(lanes)
    assert order.index("b0") == 10


def test_critical_is_never_passed_over_for_the_starvation_guard() -> None:
    lanes: PriorityLanes[str] = PriorityLanes(burst=2)
    lanes.put(Priority.BACKGROUND, "b0")
    for i in range(10):
        lanes.put(Priority.CRITICAL, f"c{i}")
    order = _drain(lanes)
    assert order[-1] == "b0"

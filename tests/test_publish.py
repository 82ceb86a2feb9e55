from __future__ import annotations

from typing import Any

import pytest

from mesh import jsapi
from mesh.catalog import Priority
from mesh.client import Mesh
from mesh.errors import (
    InvalidToken,
    NotSerializable,
    PayloadTooLarge,
    UnknownEventType,
    WrongPriority,
)
from mesh.events import Event, decode


async def stored_total(mesh: Mesh) -> int:
    total = 0
    for p in Priority:
        info = await jsapi.stream_info(mesh.nc, p.stream)
        assert info is not None
        total += info["state"]["messages"]
    return total


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (Event(event_type="NOT_A_TYPE", symbol="AAPL"), UnknownEventType),
        (
            Event(event_type="MARGIN_CALL", account="A1", priority=Priority.BACKGROUND),
            WrongPriority,
        ),
        (Event(event_type="PRICE_UPDATE", symbol="AAPL.>"), InvalidToken),
        (Event(event_type="PRICE_UPDATE", symbol="*"), InvalidToken),
        (Event(event_type="ORDER_PLACED", symbol="AAPL", account="ACC 1"), InvalidToken),
        (Event(event_type="ORDER_PLACED", symbol="AAPL", account=""), InvalidToken),
        (
            Event(event_type="PRICE_UPDATE", symbol="AAPL", payload={"blob": "x" * 2_000_000}),
            PayloadTooLarge,
        ),
        (Event(event_type="PRICE_UPDATE", symbol="AAPL", payload={"x": object()}), NotSerializable),
    ],
    ids=[
        "unknown-type",
        "wrong-priority",
        "wildcard-symbol",
        "star-symbol",
        "space-account",
        "empty-account",
        "oversized",
        "not-serializable",
    ],
)
async def test_bad_input_is_refused_and_publishes_nothing(
    mesh: Mesh, event: Event, error: type[Exception]
) -> None:
    before = await stored_total(mesh)
    good = Event(event_type="PRICE_UPDATE", symbol="AAPL", payload={"price": 1.0})
    with pytest.raises(error) as info:
        # One bad event in a batch: none of the batch is published.
        await mesh.publish_many([good, event])
    assert str(info.value)  # every refusal says what was wrong
    assert await stored_total(mesh) == before


async def test_oversize_limit_is_the_servers(mesh: Mesh) -> None:
    assert mesh.nc.max_payload == 1024 * 1024  # nats-config/server.conf max_payload


async def test_publish_returns_the_stream_sequence_and_sets_headers(mesh: Mesh, tag: str) -> None:
    sub = await mesh.nc.subscribe(f"tm.high.market.PRICE_UPDATE.{tag}.>")
    event = Event(event_type="PRICE_UPDATE", symbol=tag, payload={"price": 101.5})
    seq = await mesh.publish(event)
    assert seq > 0
    msg = await sub.next_msg(timeout=5)
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == event.event_id
    assert msg.headers["Tm-Correlation-Id"] == event.correlation_id
    got = decode(msg.data)
    assert got.event_id == event.event_id
    assert got.priority is Priority.HIGH
    assert got.source == "tests"
    stored = await jsapi.call(mesh.nc, "$JS.API.STREAM.MSG.GET.TM_HIGH", {"seq": seq})
    assert stored["message"]["subject"].startswith(f"tm.high.market.PRICE_UPDATE.{tag}._.")


async def test_publishing_the_same_event_again_stores_it_once(mesh: Mesh, tag: str) -> None:
    event = Event(event_type="MARGIN_CALL", account=tag, payload={"deficit": 1000})
    first = await mesh.publish(event)
    again = await mesh.publish(event)
    assert again == first
    assert mesh.publisher.stats.duplicates >= 1
    info = await jsapi.call(
        mesh.nc,
        "$JS.API.STREAM.INFO.TM_CRITICAL",
        {"subjects_filter": f"tm.critical.risk.*._.{tag}.*"},
    )
    assert sum(info["state"]["subjects"].values()) == 1


async def test_publish_many_keeps_order_and_checks_every_ack(mesh: Mesh, tag: str) -> None:
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(5000)]
    seqs = await mesh.publish_many(events)
    assert len(seqs) == 5000
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5000


async def test_retry_after_a_missing_ack_stores_once(nats_server: Any, tag: str) -> None:
    # An ack timeout far below the time 20,000 acks take: most events are sent again
    # (same Nats-Msg-Id) before their first ack arrives.
    n = 20_000
    async with Mesh.connect(nats_server.url, service="tests", ack_timeout=0.001) as m:
        events = [Event(event_type="ORDER_PLACED", symbol="AAPL", account=tag) for _ in range(n)]
        seqs = await m.publish_many(events)
        assert m.publisher.stats.resent > 0
        info = await jsapi.call(
            m.nc, "$JS.API.STREAM.INFO.TM_HIGH", {"subjects_filter": f"tm.high.order.*.*.{tag}.*"}
        )
    assert sum(info["state"]["subjects"].values()) == n
    assert len(set(seqs)) == n

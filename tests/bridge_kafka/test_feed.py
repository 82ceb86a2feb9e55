"""The NATS -> Kafka feed (bridge_kafka.feed.PassThrough): stored bytes passed through,
the record's fields read without the whole event, priorities taken most urgent first
without starving the others."""

from __future__ import annotations

from bridge_kafka.feed import PassThrough
from mesh import jsapi
from mesh.client import Mesh
from mesh.events import Event, decode
from mesh.subscriber import Start, SubscriptionOptions, ack_many
from tests.helpers import eventually, settled


async def test_critical_first_every_priority_gets_a_share_bytes_as_stored(
    mesh: Mesh, tag: str
) -> None:
    background = [
        Event(event_type="ANALYTICS_UPDATE", account=tag, payload={"i": i}) for i in range(300)
    ]
    critical = Event(event_type="MARGIN_CALL", account=tag, payload={"call": 1})
    await mesh.publish_many(background)
    await mesh.publish(critical)
    sub = PassThrough(
        mesh,
        [f"tm.*.*.*.*.{tag}.*"],
        SubscriptionOptions(start=Start.all(), max_ack_pending=1000),
    )
    await sub.start()
    try:
        await eventually(lambda: sub._waiting == 301, 10, "all 301 deliveries queued")
        first = await sub.take(64)
        # the critical event first, then background: a share now, not only after critical
        assert [p.fields.event_type for p in first[:2]] == ["MARGIN_CALL", "ANALYTICS_UPDATE"]
        assert len(first) == 64
        rest = await sub.take(1000)
        got = first[1:] + rest
        # one stream, one key: the stored order, and the bytes exactly as stored
        assert [p.fields.event_id for p in got] == [e.event_id for e in background]
        assert decode(got[0].data).payload == {"i": 0}
        assert got[0].event.payload == {"i": 0}
        assert got[0].fields.account == tag
        assert got[0].fields.symbol is None
        assert first[0].stream == "TM_CRITICAL"
        assert first[0].seq > 0
    finally:
        await sub.close()


async def test_a_stored_message_that_is_not_an_event_is_termed_and_the_feed_flows_on(
    mesh: Mesh, tag: str
) -> None:
    """It is never handed to Kafka and never delivered again (TERM, not left unacked)."""
    sub = PassThrough(mesh, [f"tm.high.*.*.{tag}.>"], SubscriptionOptions(start=Start.new()))
    await sub.start()
    try:
        # not an event at all, published straight into the stream past the mesh API
        await mesh.nc.request(f"tm.high.market.PRICE_UPDATE.{tag}._", b"{not json", timeout=5)
        good = Event(event_type="PRICE_UPDATE", symbol=tag, payload={"price": 1})
        await mesh.publish(good)
        got = await sub.take(10)
        assert [p.fields.event_id for p in got] == [good.event_id]
        assert sub.malformed == 1
        await ack_many(got)
        ((stream, name, _),) = sub._consumers
        info = await settled(
            lambda: jsapi.call(mesh.nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}"),
            lambda i: i["num_ack_pending"] == 0,
        )
        assert info["num_ack_pending"] == 0  # the bad one was termed, the good one acked
        assert info["num_redelivered"] == 0
    finally:
        await sub.close()

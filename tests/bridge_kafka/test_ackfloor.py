"""The NATS -> Kafka ack floor (bridge_kafka.ackfloor): one AckAll per batch, never one
that covers a delivery that is not done, none while deliveries may exist unseen."""

from __future__ import annotations

import base64

import msgspec

from bridge_kafka import mapping
from bridge_kafka.ackfloor import AckFloor, Seen
from bridge_kafka.bridge import Bridge
from bridge_kafka.config import BridgeConfig
from bridge_kafka.feed import _NO_FIELDS, Passed
from mesh import jsapi
from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer, free_port
from tests.helpers import eventually, settled


def delivery(seq: int, dseq: int) -> Passed:
    reply = f"$JS.ACK.TM_STANDARD.c.1.{seq}.{dseq}.1700000000000000000.0".encode()
    return Passed(None, b"tm.x", reply, None, b"{}", _NO_FIELDS, "TM_STANDARD")


def acked(floor: AckFloor) -> tuple[int, int] | None:
    t = floor.ack_target()
    return None if t is None else (t.seq, t.dseq)


def test_the_ack_covers_the_done_prefix_and_stops_at_the_first_not_done() -> None:
    floor = AckFloor()
    for seq, dseq in ((10, 1), (11, 2), (12, 3), (14, 4)):
        assert floor.seen(delivery(seq, dseq)) is Seen.NEW
    floor.done(11)
    floor.done(12)
    assert acked(floor) is None  # 10 is still in flight: acking 12 would ack it
    floor.done(10)
    assert acked(floor) == (12, 3)  # one ack for three
    assert acked(floor) is None  # nothing new since
    floor.done(14)
    assert acked(floor) == (14, 4)
    assert len(floor) == 0


def test_a_redelivery_is_not_new_work_and_its_newest_delivery_is_acked() -> None:
    floor = AckFloor()
    floor.seen(delivery(5, 1))
    floor.seen(delivery(6, 2))
    assert floor.seen(delivery(5, 3)) is Seen.IN_FLIGHT  # ack_wait passed, Kafka slow
    assert floor.in_flight() == 2
    floor.done(5)
    assert acked(floor) == (5, 3)
    floor.done(6)
    # The server ignores an AckAll whose delivery sequence is not above the last one
    # (3): 6's only delivery (2) cannot be acked until it is redelivered...
    assert acked(floor) is None
    assert floor.seen(delivery(6, 4)) is Seen.DONE  # ...and is then not produced again
    assert acked(floor) == (6, 4)


def test_a_gap_in_the_delivery_sequence_holds_every_ack_until_the_server_agrees() -> None:
    floor = AckFloor()
    floor.seen(delivery(1, 1))
    floor.seen(delivery(3, 3))  # delivery 2 (stream sequence 2) was lost with a connection
    floor.done(1)
    floor.done(3)
    assert floor.held
    assert acked(floor) is None
    # The server's word after the gap: 3 messages pending (1, 2, 3), last delivery 3 of
    # stream sequence 3. Two are known here: 2 is unseen, so the hold stays.
    assert floor.checked(floor.cause, pending=3, delivered_dseq=3, delivered_seq=3) is False
    assert acked(floor) is None  # however long its redelivery takes: there is no clock
    assert floor.seen(delivery(2, 4)) is Seen.NEW  # redelivered after ack_wait
    assert floor.checked(floor.cause, pending=3, delivered_dseq=4, delivered_seq=3) is True
    assert not floor.held
    assert acked(floor) == (1, 1)  # 2 is in flight
    floor.done(2)
    assert acked(floor) == (3, 3)  # covers 2 as well (the server acks by stream sequence)


def test_a_check_waits_for_the_deliveries_made_before_it() -> None:
    """The server counted deliveries this floor has not processed yet: no answer until
    they are in (or a later one shows they were lost)."""
    floor = AckFloor()
    floor.hold()
    floor.seen(delivery(10, 1))
    floor.done(10)
    assert floor.checked(floor.cause, pending=2, delivered_dseq=2, delivered_seq=11) is None
    floor.seen(delivery(11, 2))
    assert floor.checked(floor.cause, pending=2, delivered_dseq=2, delivered_seq=11) is True
    floor.done(11)
    assert acked(floor) == (11, 2)


def test_a_check_taken_before_a_newer_cause_does_not_lift_the_hold() -> None:
    floor = AckFloor()
    floor.hold()
    old = floor.cause
    floor.reconnected()  # deliveries may have been lost again after that check was asked
    floor.seen(delivery(5, 1))
    floor.done(5)
    assert floor.checked(old, pending=1, delivered_dseq=1, delivered_seq=5) is False
    assert floor.held
    assert floor.checked(floor.cause, pending=1, delivered_dseq=1, delivered_seq=5) is True
    assert acked(floor) == (5, 1)


def test_nothing_pending_on_the_server_lifts_the_hold_at_once() -> None:
    floor = AckFloor()
    floor.hold()  # e.g. reconnected with nothing in flight
    assert floor.checked(floor.cause, pending=0, delivered_dseq=90, delivered_seq=700) is True
    assert not floor.held


def test_held_acks_resume_in_stream_order_once_the_unseen_are_seen() -> None:
    floor = AckFloor()
    floor.hold()  # a previous process left deliveries unacked (stream sequence 40)
    for seq, dseq in ((50, 10), (51, 11)):
        floor.seen(delivery(seq, dseq))
        floor.done(seq)
    assert acked(floor) is None
    # pending on the server: 40, 50, 51; 40 is not known here yet
    assert floor.checked(floor.cause, pending=3, delivered_dseq=11, delivered_seq=51) is False
    floor.seen(delivery(40, 12))  # the previous process's, redelivered
    assert floor.checked(floor.cause, pending=3, delivered_dseq=11, delivered_seq=51) is True
    assert acked(floor) is None  # 40 comes first and is in flight
    floor.done(40)
    # one ack at the end of the done prefix; the server acks by stream sequence, so 40
    # (delivered after it) is covered too
    assert acked(floor) == (51, 11)
    assert len(floor) == 0


def test_a_redelivery_of_an_acked_message_is_acked_again_not_produced() -> None:
    floor = AckFloor()
    floor.seen(delivery(7, 1))
    floor.done(7)
    assert acked(floor) == (7, 1)
    assert floor.seen(delivery(7, 2)) is Seen.DONE  # that ack was lost with a connection
    assert acked(floor) == (7, 2)


# -- against a real NATS server --------------------------------------------------------


def _config(tag: str) -> BridgeConfig:
    return msgspec.convert(
        {
            # Nothing listens there: every record stays in flight to Kafka.
            "bootstrap": f"127.0.0.1:{free_port()}",
            "name": f"floor{tag.lower()}",
            "outbound": [{"filters": [f"tm.*.*.*.{tag}.>"], "topic": "never"}],
        },
        BridgeConfig,
    ).validate()


def _from_kafka(mesh: Mesh, tag: str, i: int) -> tuple[str, bytes, bytes]:
    """An event the bridge itself brought from Kafka: done at once (never sent back)."""
    event = Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i})
    item = mapping.event_to_nats(event, mesh.catalog, "in", 0, i, None, 1 << 20)
    return item.subject, item.headers, item.payload


async def test_a_done_event_after_one_in_flight_is_not_acked_before_it(
    nats_server: NatsServer, mesh: Mesh, tag: str
) -> None:
    """Kafka is unreachable: the ordinary event stays in flight. The looped events around
    it are done at once; the ack covers the first and stops before the in-flight one."""
    cfg = _config(tag)
    async with Mesh.connect(nats_server.url, service="bridge") as bm, Bridge(cfg, bm) as bridge:
        await mesh.publisher.publish_many([_from_kafka(mesh, tag, 1)])
        await mesh.publish(Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": 2}))
        await mesh.publisher.publish_many([_from_kafka(mesh, tag, 3)])
        m = bridge.metrics.nats_to_kafka
        await eventually(lambda: m.received == 3, 10, "three deliveries at the bridge")
        assert m.skipped_loop == 2
        assert bridge.outbound is not None
        name = f"{cfg.durable}-0-high"  # PRICE_UPDATE is a high priority event
        info = await settled(
            lambda: jsapi.call(mesh.nc, f"$JS.API.CONSUMER.INFO.TM_HIGH.{name}"),
            lambda i: i["ack_floor"]["consumer_seq"] >= 1,
        )
        assert info["config"]["ack_policy"] == "all"
        assert info["ack_floor"]["consumer_seq"] == 1  # the first looped event only
        assert info["num_ack_pending"] == 2  # the in-flight one and the one after it
        assert bridge.outbound.inflight() == 1


async def test_a_stored_message_that_is_not_an_event_is_dead_lettered_and_acked(
    nats_server: NatsServer, mesh: Mesh, tag: str
) -> None:
    """With AckAll a TERM would ack everything before it: the bridge dead-letters the
    message on its NATS DLQ subject instead, and the ack covers it and what follows."""
    cfg = _config(tag)
    async with Mesh.connect(nats_server.url, service="bridge") as bm, Bridge(cfg, bm) as bridge:
        # not an event at all, published straight into the stream past the mesh API
        await mesh.nc.request(f"tm.high.market.PRICE_UPDATE.{tag}._", b"{not json", timeout=5)
        await mesh.publisher.publish_many([_from_kafka(mesh, tag, 1)])
        m = bridge.metrics.nats_to_kafka
        await eventually(lambda: m.received == 2 and m.dlq == 1, 10, "both handled")
        name = f"{cfg.durable}-0-high"
        info = await settled(
            lambda: jsapi.call(mesh.nc, f"$JS.API.CONSUMER.INFO.TM_HIGH.{name}"),
            lambda i: i["num_ack_pending"] == 0,
        )
        assert info["num_ack_pending"] == 0
        assert info["num_redelivered"] == 0
    got = await jsapi.call(
        mesh.nc,
        "$JS.API.STREAM.MSG.GET.TM_BRIDGE_DLQ",
        {"last_by_subj": f"{cfg.dlq_subject}.{cfg.name}"},
    )
    msg = got["message"]
    assert base64.b64decode(msg["data"]) == b"{not json"  # as stored
    headers = base64.b64decode(msg["hdrs"]).decode()
    assert "Tm-Dlq-Reason: not an event" in headers

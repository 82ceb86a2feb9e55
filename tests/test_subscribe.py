from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from mesh import jsapi, subscriber
from mesh.catalog import Priority
from mesh.client import Mesh
from mesh.errors import MeshError
from mesh.events import Event, encode
from mesh.subscriber import Interest, Start, ack_info, ack_many, stored_ns
from mesh.transforms import Transforms
from tests.helpers import eventually, settled


def orders(tag: str, n: int, start: int = 0) -> list[Event]:
    return [
        Event(event_type="ORDER_PLACED", symbol="AAPL", account=tag, payload={"i": i})
        for i in range(start, start + n)
    ]


async def test_durable_consumer_resumes_after_the_last_ack(mesh: Mesh, tag: str) -> None:
    await mesh.publish_many(orders(tag, 10))
    async with mesh.subscribe(Interest(account=tag), durable=f"d{tag}", start=Start.all()) as sub:
        for expected in range(5):
            d = await sub.next(timeout=10)
            assert d.event.payload["i"] == expected
            await d.ack_sync()
    await mesh.publish_many(orders(tag, 5, start=10))
    async with mesh.subscribe(Interest(account=tag), durable=f"d{tag}", start=Start.all()) as sub:
        got = []
        for _ in range(10):
            d = await sub.next(timeout=10)
            got.append(d.event.payload["i"])
            await d.ack()
    assert got == list(range(5, 15))


async def test_a_durable_consumer_reopened_with_another_ack_policy_is_refused(
    mesh: Mesh, tag: str
) -> None:
    """JetStream cannot change it, and acking by the wrong policy acks too much or too
    little: a clear error, and the consumer left as it was."""
    await mesh.publish_many(orders(tag, 3))
    durable = f"p{tag}"
    async with mesh.subscribe(Interest(account=tag), durable=durable, start=Start.all()) as sub:
        await (await sub.next(timeout=10)).ack_sync()
    with pytest.raises(MeshError, match="acks 'explicit' but this subscriber acks 'all'"):
        async with mesh.subscribe(Interest(account=tag), durable=durable, ack="all"):
            pass
    info = await jsapi.call(mesh.nc, f"$JS.API.CONSUMER.INFO.TM_HIGH.{durable}-high")
    assert info["config"]["ack_policy"] == "explicit"
    assert info["ack_floor"]["stream_seq"] > 0  # its position kept


async def test_start_at_a_sequence_or_a_time(mesh: Mesh, tag: str) -> None:
    first = await mesh.publish_many(orders(tag, 5))
    middle = datetime.now(UTC)
    await mesh.publish_many(orders(tag, 5, start=5))
    async with mesh.subscribe(Interest(account=tag), start=Start.at_seq(first[3])) as sub:
        assert (await sub.next(timeout=10)).event.payload["i"] == 3
    async with mesh.subscribe(Interest(account=tag), start=Start.at_time(middle)) as sub:
        d = await sub.next(timeout=10)
        assert d.event.payload["i"] == 5


async def test_content_filter_on_payload_and_headers(mesh: Mesh, tag: str) -> None:
    events = [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"price": p}) for p in (99, 101, 150)
    ]
    await mesh.publish_many(events)
    where = f'payload.price > 100 and header.Nats-Msg-Id != "{events[1].event_id}"'
    async with mesh.subscribe(Interest(symbol=tag), start=Start.all(), where=where) as sub:
        d = await sub.next(timeout=10)
        assert d.event.payload["price"] == 150
        await d.ack()
    assert sub.stats.filtered_out == 2


async def test_old_producer_new_consumer_through_upcasters_and_projection(
    mesh: Mesh, tag: str
) -> None:
    transforms = Transforms()

    @transforms.upcaster("ORDER_PLACED", 1)
    def qty_to_quantity(p: dict[str, object]) -> dict[str, object]:
        p["quantity"] = p.pop("qty")
        return p

    @transforms.upcaster("ORDER_PLACED", 2)
    def add_venue(p: dict[str, object]) -> dict[str, object]:
        return {**p, "venue": "XNAS"}

    old = Event(
        event_type="ORDER_PLACED",
        symbol="AAPL",
        account=tag,
        payload={"qty": 100, "side": "buy", "note": "x"},
    )
    await mesh.publish(old)
    async with mesh.subscribe(
        Interest(account=tag),
        start=Start.all(),
        transforms=transforms,
        project=["quantity", "venue"],
    ) as sub:
        d = await sub.next(timeout=10)
    assert d.event.version == 3
    assert d.event.payload == {"quantity": 100, "venue": "XNAS"}


async def test_a_malformed_message_is_skipped_and_the_stream_keeps_flowing(
    mesh: Mesh, tag: str
) -> None:
    async with mesh.subscribe(Interest(symbol=tag)) as sub:
        # Not an event at all, published straight into the stream past the mesh API.
        await mesh.nc.request(f"tm.high.market.PRICE_UPDATE.{tag}._", b"{not json", timeout=5)
        good = Event(event_type="PRICE_UPDATE", symbol=tag, payload={"price": 1})
        await mesh.publish(good)
        d = await sub.next(timeout=10)
        assert d.event.event_id == good.event_id
    assert sub.stats.malformed == 1


async def test_closing_an_ephemeral_subscription_removes_its_consumers(
    mesh: Mesh, tag: str
) -> None:
    async def consumer_names() -> set[str]:
        return {c["name"] for c in await jsapi.consumers(mesh.nc, "TM_HIGH")}

    before = await consumer_names()
    async with mesh.subscribe(Interest(symbol=tag)):
        assert len(await consumer_names() - before) == 1
    assert await consumer_names() == before


async def test_next_many_takes_what_is_there_most_urgent_first_and_ack_many_acks_it(
    mesh: Mesh, tag: str
) -> None:
    events = [*orders(tag, 20), Event(event_type="MARGIN_CALL", account=tag)]
    await mesh.publish_many(events)
    durable = f"m{tag}"
    async with mesh.subscribe(Interest(account=tag), durable=durable, start=Start.all()) as sub:
        await eventually(lambda: sub.pending(Priority.HIGH) == 20, 10, "20 orders received")
        await eventually(lambda: sub.pending(Priority.CRITICAL) == 1, 10, "1 critical received")
        batch = await sub.next_many(8, timeout=10)
        assert [d.event.event_type for d in batch] == ["MARGIN_CALL"] + ["ORDER_PLACED"] * 7
        assert [d.event.payload.get("i") for d in batch[1:]] == list(range(7))
        assert all(d.data == encode(d.event) for d in batch)  # the payload as stored
        rest = await sub.next_many(100, timeout=10)
        assert len(rest) == 13  # no waiting for more than is there
        await ack_many(batch + rest)

        for stream, name in (("TM_HIGH", "high"), ("TM_CRITICAL", "critical")):
            subject = f"$JS.API.CONSUMER.INFO.{stream}.{durable}-{name}"
            info = await settled(  # the server applies acks asynchronously
                lambda s=subject: jsapi.call(mesh.nc, s), lambda i: i["num_ack_pending"] == 0
            )
            assert info["num_ack_pending"] == 0
            assert info["ack_floor"]["stream_seq"] == info["delivered"]["stream_seq"]
        with pytest.raises(TimeoutError):
            await sub.next_many(10, timeout=0.2)


async def test_a_delivery_says_when_the_stream_stored_it(mesh: Mesh, tag: str) -> None:
    before = time.time_ns()
    [event] = orders(tag, 1)
    await mesh.publish(event)
    after = time.time_ns()
    async with mesh.subscribe(Interest(account=tag), start=Start.all()) as sub:
        d = await sub.next(timeout=10)
    # The server stamps the message between our publish and its acknowledgement.
    assert event.timestamp <= d.stored_ns
    assert before <= d.stored_ns <= after


def test_ack_subject_forms_give_sequence_count_and_store_time() -> None:
    short = b"$JS.ACK.TM_HIGH.c1.2.41.7.1764268800123456789.0"
    long = b"$JS.ACK.hub.ACCHASH.TM_HIGH.c1.2.41.7.1764268800123456789.0.tok"
    for reply in (short, long):
        assert ack_info(reply) == (41, 2)
        assert stored_ns(reply) == 1764268800123456789


@pytest.mark.slow
async def test_a_lost_flow_control_request_is_answered_from_the_idle_heartbeat(
    mesh: Mesh, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push consumer sends nothing more until its flow-control request is answered. If
    the request is lost (with a dropped connection), the server names it in its idle
    heartbeats (`Nats-Consumer-Stalled`); the subscriber answers it there and every event
    still arrives. Without that answer the consumer stays stalled for good."""
    real = subscriber.answer_control
    lost: list[bytes] = []

    def losing_the_first_request(nc: Any, reply: bytes, headers: bytes | None) -> Any:
        if not lost and headers is not None and headers.startswith(b"NATS/1.0 100 FlowControl"):
            lost.append(reply)
            return None
        return real(nc, reply, headers)

    monkeypatch.setattr(subscriber, "answer_control", losing_the_first_request)
    pad = "x" * 400
    events = [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i, "pad": pad})
        for i in range(20_000)
    ]
    await mesh.publish_many(events)
    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", ack="none", start=Start.all()) as sub:
        got: list[str] = []
        while len(got) < len(events):
            # idle heartbeats come every 5 s: the stall lasts up to that long
            d = await asyncio.wait_for(sub.next(), 20)
            got.append(d.event.event_id)
    assert lost, "no flow-control request came: the test did not exercise a stall"
    assert got == [e.event_id for e in events]

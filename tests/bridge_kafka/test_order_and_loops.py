"""Per-key order across the hop (both ways), two-way mode without loops, poison records,
and Kafka's own console producer as a foreign producer."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import defaultdict

import msgspec

from bridge_kafka.bridge import Bridge
from bridge_kafka.broker import KafkaBroker, console_producer
from bridge_kafka.config import BridgeConfig
from mesh.client import Mesh
from mesh.events import Event, decode
from mesh.server import NatsServer
from mesh.subscriber import Start
from tests.bridge_kafka.conftest import bridge_config
from tests.bridge_kafka.kafka_helpers import produce, produce_events, read_topic
from tests.helpers import eventually

SYMBOLS = 10
UPDATES = 1000


def _by_account(kafka: KafkaBroker, topics: dict[str, str], tag: str) -> BridgeConfig:
    # Ten symbols, one account (the test's tag): the outbound filter selects by account.
    return bridge_config(
        kafka,
        topics,
        tag,
        outbound=[{"filters": [f"tm.*.*.*.*.{tag}.>"], "topic": topics["out"], "key": "symbol"}],
    )


def _updates(tag: str) -> list[Event]:
    # Interleaved: symbol 0 update 0, symbol 1 update 0, ...
    return [
        Event(event_type="PRICE_UPDATE", symbol=f"S{s}{tag}", account=tag, payload={"n": n})
        for n in range(UPDATES)
        for s in range(SYMBOLS)
    ]


def _assert_ordered(seq: list[tuple[str, int]]) -> None:
    per: dict[str, list[int]] = defaultdict(list)
    for symbol, n in seq:
        per[symbol].append(n)
    assert len(per) == SYMBOLS
    for symbol, ns in per.items():
        assert ns == list(range(UPDATES)), f"{symbol} out of order or incomplete"


async def test_per_key_order_kafka_to_nats(
    nats_server: NatsServer, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    events = _updates(tag)
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(_by_account(kafka, topics, tag), bm),
        mesh.subscribe(f"tm.*.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub,
    ):
        # Keyed by symbol: each symbol's updates share one of the 4 partitions.
        await produce_events(kafka.bootstrap, topics["in"], events)
        got = [await sub.next(30) for _ in events]
    _assert_ordered([(d.event.symbol or "", d.event.payload["n"]) for d in got])


async def test_per_key_order_nats_to_kafka(
    nats_server: NatsServer, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    events = _updates(tag)
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(_by_account(kafka, topics, tag), bm),
    ):
        await mesh.publish_many(events)
        records = await read_topic(kafka.bootstrap, topics["out"], len(events))
    seq = []
    for r in records:
        e = decode(r.value())
        assert r.key() == (e.symbol or "").encode()
        seq.append((e.symbol or "", e.payload["n"]))
    _assert_ordered(seq)


async def test_two_way_same_subjects_and_topic_no_loop(
    nats_server: NatsServer, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    # One topic both ways, one subject filter both ways: without the origin header every
    # event would circle forever.
    cfg = bridge_config(
        kafka,
        topics,
        tag,
        inbound=[{"topics": [topics["in"]]}],
        outbound=[{"filters": [f"tm.*.*.*.{tag}.>"], "topic": topics["in"]}],
    )
    from_nats = [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"side": "nats", "i": i})
        for i in range(100)
    ]
    from_kafka = [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"side": "kafka", "i": i})
        for i in range(100)
    ]
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm) as bridge,
    ):
        await mesh.publish_many(from_nats)
        await produce_events(kafka.bootstrap, topics["in"], from_kafka)
        m = bridge.metrics
        # Each event crosses once and is seen once more, on the far side, as its own echo.
        await eventually(
            lambda: (
                m.kafka_to_nats.delivered == 100
                and m.nats_to_kafka.delivered == 100
                and m.kafka_to_nats.skipped_loop == 100
                and m.nats_to_kafka.skipped_loop == 100
            ),
            30,
            "both directions to settle",
        )
        # Still settled a moment later: nothing circles.
        await asyncio.sleep(1.0)
        assert m.kafka_to_nats.delivered == 100
        assert m.nats_to_kafka.delivered == 100
    info = await mesh.stream_info("TM_HIGH")
    assert info is not None
    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub:
        got = [await sub.next(10) for _ in range(200)]
        assert {d.event.event_id for d in got} == {e.event_id for e in from_nats + from_kafka}
    records = await read_topic(kafka.bootstrap, topics["in"], 200, timeout=5)
    assert len(records) == 200


async def test_poison_records_go_to_dlq_and_partition_keeps_flowing(
    bridge: Bridge, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    good = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(3)]
    unknown = msgspec.json.encode(Event(event_type="NO_SUCH_TYPE", symbol=tag, payload={}))
    huge = msgspec.json.encode(
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"x": "y" * 1_200_000})
    )
    key = tag.encode()
    # All on one key, so on one partition: the good ones after the poison must still flow.
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]] = [
        (key, msgspec.json.encode(good[0]), None),
        (key, b"this is not json", None),
        (key, unknown, None),
        (key, huge, None),
        (key, msgspec.json.encode(good[1]), None),
        (key, b'{"event_type": 5}', None),
        (key, msgspec.json.encode(good[2]), None),
    ]
    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub:
        await asyncio.to_thread(produce, kafka.bootstrap, topics["in"], records)
        got = [await sub.next(30) for _ in good]
    assert [d.event.event_id for d in got] == [e.event_id for e in good]
    dlq = await read_topic(kafka.bootstrap, topics["dlq"], 4)
    reasons = [dict(r.headers())["tm-dlq-reason"].decode() for r in dlq]
    assert reasons == ["not JSON", "unknown type", "too large", "not an event"]
    assert dict(dlq[0].headers())["tm-dlq-source"].decode().startswith(topics["in"] + "/")
    assert bridge.metrics.kafka_to_nats.dlq == 4


async def test_console_producer_as_foreign_producer(
    nats_server: NatsServer, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    # Foreign records: plain JSON objects, symbol from the key; the event type is fixed by
    # the rule; the event id comes from topic/partition/offset.
    cfg = bridge_config(
        kafka,
        topics,
        tag,
        inbound=[
            {
                "topics": [topics["in"]],
                "format": "foreign",
                "event_type": "PRICE_UPDATE",
                "symbol_from": "key",
                "account_from": "field:desk",
            }
        ],
        outbound=[],
    )
    lines = "".join(f"{tag}|{json.dumps({'px': 100 + i, 'desk': 'D1'})}\n" for i in range(20))
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm),
        mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub,
    ):
        cmd = console_producer(kafka.bootstrap, topics["in"], "parse.key=true", "key.separator=|")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await proc.communicate(lines.encode())
        assert proc.returncode == 0, out.decode()[-2000:]
        got = [await sub.next(60) for _ in range(20)]
    assert [d.event.payload["px"] for d in got] == [100 + i for i in range(20)]
    assert {d.event.account for d in got} == {"D1"}
    assert got[0].event.event_type == "PRICE_UPDATE"
    assert got[0].headers["Nats-Msg-Id"] == got[0].event.event_id
    assert got[0].headers["Tm-Kafka-Pos"].startswith(topics["in"] + "/")

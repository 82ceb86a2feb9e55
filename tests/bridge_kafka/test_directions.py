"""Both directions deliver, with headers across and per-key order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

import pytest

from bridge_kafka.bridge import Bridge
from bridge_kafka.broker import KafkaBroker
from mesh import jsapi, wire
from mesh.catalog import Priority
from mesh.client import Mesh
from mesh.events import Event, decode, encode
from mesh.server import NatsServer
from mesh.subscriber import Start
from tests.bridge_kafka.conftest import bridge_config
from tests.bridge_kafka.kafka_helpers import produce, produce_events, read_topic
from tests.helpers import eventually, mesh_command, settled

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def jetstream_backlog(bridge: Bridge) -> int:
    """The outbound consumers' unacked + undelivered events, once 0 or after 10 s."""
    assert bridge.outbound is not None
    lag = bridge.outbound.lag
    return await settled(lambda: _total(lag()), lambda left: left == 0)


async def _total(lag: Awaitable[dict[str, int]]) -> int:
    return sum((await lag).values())


async def test_kafka_to_nats_delivers_with_ids_and_headers(
    bridge: Bridge, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    events = [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}, correlation_id=f"c{i}")
        for i in range(50)
    ]
    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all()) as sub:
        await produce_events(kafka.bootstrap, topics["in"], events)
        got = [await sub.next(30) for _ in events]
    assert [d.event.payload["i"] for d in got] == list(range(50))
    assert [d.headers["Nats-Msg-Id"] for d in got] == [e.event_id for e in events]
    assert got[3].headers["Tm-Correlation-Id"] == "c3"
    assert got[0].headers["Tm-Origin"] == "kafka"


async def test_nats_to_kafka_delivers_keyed_by_symbol(
    bridge: Bridge, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(50)]
    await mesh.publish_many(events)
    records = await read_topic(kafka.bootstrap, topics["out"], 50)
    assert [decode(r.value()).event_id for r in records] == [e.event_id for e in events]
    assert {r.key() for r in records} == {tag.encode()}
    h = dict(records[0].headers())
    assert h["tm-origin"] == b"nats"
    assert h["tm-correlation-id"] == events[0].correlation_id.encode()
    # Kafka's confirmations come back and ack JetStream: nothing left unacked there
    m = bridge.metrics.nats_to_kafka
    await eventually(lambda: m.delivered == 50, 20, "50 delivery reports")
    assert await jetstream_backlog(bridge) == 0
    assert m.received == 50  # and none was redelivered for want of an ack


async def test_status_command_reports_health_counts_and_lag(
    bridge: Bridge,
    mesh: Mesh,
    nats_server: NatsServer,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
) -> None:
    await mesh.publish_many([Event(event_type="PRICE_UPDATE", symbol=tag) for _ in range(5)])
    await read_topic(kafka.bootstrap, topics["out"], 5)
    m = bridge.metrics
    await eventually(lambda: m.kafka_up and m.nats_to_kafka.delivered == 5, 20, "delivered")
    code, out, err = await mesh_command(
        "--url", nats_server.url, "bridge", "status", "--name", bridge.cfg.name
    )
    assert code == 0, err
    status = json.loads(out)
    assert status["health"] == {"status": "ok", "down": [], "kafka": "up", "nats": "up"}
    assert status["nats_to_kafka"]["delivered"] == 5
    assert "lag" in status["kafka_to_nats"]


async def test_traceparent_and_correlation_cross_both_ways(
    bridge: Bridge, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    # Kafka -> NATS: the producer's traceparent header arrives as the NATS header.
    e_in = Event(event_type="PRICE_UPDATE", symbol=tag, correlation_id="corr-in")
    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub:
        await asyncio.to_thread(
            produce,
            kafka.bootstrap,
            topics["in"],
            [(tag.encode(), encode(e_in), [("traceparent", TRACEPARENT.encode())])],
        )
        d = await sub.next(30)
    assert d.headers["traceparent"] == TRACEPARENT
    assert d.headers["Tm-Correlation-Id"] == "corr-in"

    # NATS -> Kafka: an event published with a traceparent (as a traced service does).
    e_out = Event(event_type="PRICE_UPDATE", symbol=tag, correlation_id="corr-out")
    p = mesh.prepare(e_out)
    headers = wire.headers_block(p.event, TRACEPARENT)
    await mesh.publisher.publish_many([(p.subject, headers, p.payload)])
    # Only e_out is on the out-topic: e_in came from Kafka and is never sent back.
    (record,) = await read_topic(kafka.bootstrap, topics["out"], 1)
    assert decode(record.value()).event_id == e_out.event_id
    h = dict(record.headers())
    assert h["traceparent"] == TRACEPARENT.encode()
    assert h["tm-correlation-id"] == b"corr-out"


async def test_mesh_streams_shows_each_directions_lag_and_figures(
    bridge: Bridge,
    mesh: Mesh,
    nats_server: NatsServer,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
) -> None:
    """Kafka -> NATS: the consumer group's lag per partition; NATS -> Kafka: the durable
    consumers' backlog; each with its rate, delivered, error and dead-letter counts."""
    # librdkafka knows a partition's lag once the group has consumed from it
    events = [Event(event_type="PRICE_UPDATE", symbol=f"{tag}{i}") for i in range(20)]
    async with mesh.subscribe("tm.*.*.*.*.>", start=Start.all(), ack="none") as sub:
        await produce_events(kafka.bootstrap, topics["in"], events)
        ids = {e.event_id for e in events}
        while ids:
            ids.discard((await sub.next(30)).event.event_id)
    d = bridge.metrics.kafka_to_nats  # d.lag is replaced by each stats report
    await eventually(lambda: any(k.startswith(topics["in"]) for k in d.lag), 30, "consumer stats")
    await eventually(lambda: d.delivered >= len(events), 10, "every event confirmed")
    await eventually(lambda: bool(bridge.metrics.nats_to_kafka.lag), 10, "NATS-side lag")
    known = {k for k in d.lag if k.startswith(topics["in"])}
    code, out, err = await mesh_command("--url", nats_server.url, "streams", "--json")
    assert code == 0, err
    reports = {r["reported_by"]: r for r in json.loads(out) if "reported_by" in r}
    inbound = reports[f"bridge {bridge.cfg.name} (kafka -> nats)"]
    assert known <= set(inbound["lag"])  # every partition the bridge knew a lag for
    assert all(v >= 0 for v in inbound["lag"].values())
    assert inbound["figures"]["delivered"] >= len(events)
    assert inbound["figures"]["errors"] == 0
    assert inbound["figures"]["dlq"] == 0
    outbound = reports[f"bridge {bridge.cfg.name} (nats -> kafka)"]
    out_lag = bridge.metrics.nats_to_kafka.lag
    assert set(outbound["lag"]) == set(out_lag)  # one entry per durable consumer
    assert all(k.startswith("TM_") for k in outbound["lag"])
    assert set(outbound["figures"]) >= {"per_s", "delivered", "errors", "dlq", "skipped_loop"}
    # and in the table's text, below the streams
    code, text, err = await mesh_command("--url", nats_server.url, "streams")
    assert code == 0, err
    line = next(x for x in text.splitlines() if x.startswith(f"bridge {bridge.cfg.name} (kafka"))
    assert ", errors 0, dlq 0" in line
    assert f"bridge {bridge.cfg.name} (nats -> kafka): lag " in text


async def test_every_kafka_confirmation_acks_its_jetstream_event(
    bridge: Bridge, mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    """20,000 events at once: confirmations come back over many polls while later records
    are still in flight, and each one must still ack its JetStream event."""
    m = bridge.metrics.nats_to_kafka
    await mesh.publish_many(
        [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(20_000)]
    )
    await eventually(lambda: m.delivered == 20_000, 60, "20,000 delivery reports")
    assert await jetstream_backlog(bridge) == 0
    assert m.received == 20_000  # none redelivered for want of an ack


async def test_nats_event_too_large_for_kafka_goes_to_the_dlq_subject_as_stored(
    nats_server: NatsServer, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    cfg = bridge_config(kafka, topics, tag, max_record_bytes=2000)
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bmesh,
        Mesh.connect(nats_server.url, service="tests") as mesh,
    ):
        dlq = await mesh.nc.subscribe(f"{cfg.dlq_subject}.{cfg.name}")
        async with Bridge(cfg, bmesh) as bridge:
            events = [
                Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": 0}),
                Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": 1, "x": "y" * 3000}),
                Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": 2}),
            ]
            await mesh.publish_many(events)
            records = await read_topic(kafka.bootstrap, topics["out"], 2)
            assert [decode(r.value()).payload["i"] for r in records] == [0, 2]
            msg = await dlq.next_msg(timeout=20)
            assert msg.headers is not None
            assert msg.headers["Tm-Dlq-Reason"] == "too large"
            assert decode(msg.data).event_id == events[1].event_id
            m = bridge.metrics.nats_to_kafka
            await eventually(lambda: m.dlq == 1 and m.delivered == 2, 20, "1 dead letter + 2")
            assert await jetstream_backlog(bridge) == 0  # the dead letter is acked too


async def test_kafka_to_nats_on_streams_without_fast_batches_uses_per_event_acks(
    fresh_server: NatsServer,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Streams made before `allow_batched` was provisioned: the bridge still delivers.
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(50)]
    async with Mesh.connect(fresh_server.url, service="tests") as mesh:
        for p in Priority:
            info = await jsapi.stream_info(mesh.nc, p.stream)
            assert info is not None
            config = info["config"] | {"allow_batched": False}
            await jsapi.call(mesh.nc, f"$JS.API.STREAM.UPDATE.{p.stream}", config)
        async with (
            Mesh.connect(fresh_server.url, service="bridge") as bm,
            Bridge(bridge_config(kafka, topics, tag), bm),
            mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub,
        ):
            await produce_events(kafka.bootstrap, topics["in"], events)
            got = [await sub.next(30) for _ in events]
    assert [d.event.event_id for d in got] == [e.event_id for e in events]
    assert "batch publish is disabled" in caplog.text


async def test_metrics_file_has_counts_rates_lag_and_health_in_prometheus_text(
    nats_server: NatsServer,
    mesh: Mesh,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.prom"
    cfg = bridge_config(kafka, topics, tag)
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(30)]
    name = f'bridge="{cfg.name}"'

    def lines() -> dict[str, float]:
        if not path.exists():
            return {}
        return {
            k: float(v) for k, v in (line.rsplit(" ", 1) for line in path.read_text().splitlines())
        }

    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm, metrics_file=path),
    ):
        await produce_events(kafka.bootstrap, topics["in"], events)
        await mesh.publish_many(  # these go out (the rule's filter)
            [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"n": i}) for i in range(10)]
        )
        want = {
            f'tm_bridge_delivered_total{{{name},direction="kafka_to_nats"}}': 30,
            # 10 published here go out; the 30 from Kafka match the outbound rule too and
            # count as loops, not deliveries
            f'tm_bridge_delivered_total{{{name},direction="nats_to_kafka"}}': 10,
            f'tm_bridge_skipped_loop_total{{{name},direction="nats_to_kafka"}}': 30,
        }
        await eventually(
            lambda: all(lines().get(k) == v for k, v in want.items()), 30, "counts in the file"
        )
    got = lines()
    assert got[f'tm_bridge_up{{{name},side="kafka"}}'] == 1
    assert got[f'tm_bridge_up{{{name},side="nats"}}'] == 1
    assert got[f"tm_bridge_failed{{{name}}}"] == 0
    assert got[f"tm_bridge_process_cpu_seconds_total{{{name}}}"] > 0
    assert f'tm_bridge_rate_per_s{{{name},direction="kafka_to_nats"}}' in got
    assert any(k.startswith(f'tm_bridge_lag{{{name},direction="kafka_to_nats"') for k in got)

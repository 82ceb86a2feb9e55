"""One bridge run as one process per direction (`mesh bridge run --direction`): both
deliver, `mesh bridge status` merges them and names a missing one, and positions carry
over from one process for both directions to one per direction (same name, so the same
consumer group and durable consumers)."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import pytest

from bridge_kafka.broker import KafkaBroker
from mesh.client import Mesh
from mesh.events import Event, decode
from mesh.server import NatsServer
from mesh.subscriber import Start
from tests.bridge_kafka.conftest import bridge_config
from tests.bridge_kafka.kafka_helpers import produce_events, read_until_ids
from tests.helpers import mesh_command


def _events(tag: str, side: str, n: int) -> list[Event]:
    return [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"side": side, "i": i})
        for i in range(n)
    ]


async def _send(
    mesh: Mesh, kafka: KafkaBroker, topics: dict[str, str], tag: str, label: str, n: int
) -> tuple[list[Event], list[Event]]:
    """`n` events into Kafka's in-topic and `n` published on NATS."""
    to_nats, to_kafka = _events(tag, f"kafka-{label}", n), _events(tag, f"nats-{label}", n)
    await produce_events(kafka.bootstrap, topics["in"], to_nats)
    await mesh.publish_many(to_kafka)
    return to_nats, to_kafka


async def _out_records(kafka: KafkaBroker, topics: dict[str, str], want: set[str]) -> list[Any]:
    """The out-topic's records until every wanted event id is there, plus a grace."""
    return await asyncio.to_thread(read_until_ids, kafka.bootstrap, topics["out"], want)


async def _status(nats_server: NatsServer, name: str) -> tuple[int, dict[str, Any]]:
    argv = ("--url", nats_server.url, "bridge", "status", "--name", name)
    code, out, err = await mesh_command(*argv)
    assert out, err
    return code, json.loads(out)


@pytest.mark.slow
async def test_one_process_per_direction_delivers_and_status_merges_and_names_a_missing_one(
    nats_server: NatsServer,
    mesh: Mesh,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    bridge_process: Any,
) -> None:
    cfg = bridge_config(kafka, topics, tag)
    k2n = bridge_process(cfg, direction="kafka_to_nats")
    n2k = bridge_process(cfg, direction="nats_to_kafka")
    await k2n.start()
    await n2k.start()
    assert "running kafka_to_nats (" in k2n.log.read_text()
    to_nats, to_kafka = await _send(mesh, kafka, topics, tag, "a", 50)

    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub:
        got = [await sub.next(30) for _ in range(100)]
    assert {d.event.event_id for d in got} == {e.event_id for e in to_nats + to_kafka}
    records = await _out_records(kafka, topics, {e.event_id for e in to_kafka})
    assert sorted(decode(r.value()).event_id for r in records) == sorted(
        e.event_id for e in to_kafka
    )
    # Each process reports only its own direction; the outbound one skipped the 50 that
    # came from Kafka (the loop breaker works across processes: it is in the headers).
    out = await n2k.wait_delivered(mesh.nc, "nats_to_kafka", 50)
    assert out["skipped_loop"] == 50
    assert "kafka_to_nats" not in await n2k.status(mesh.nc)
    await k2n.wait_delivered(mesh.nc, "kafka_to_nats", 50)

    code, merged = await _status(nats_server, cfg.name)
    assert code == 0
    assert merged["health"] == {"status": "ok", "down": [], "kafka": "up", "nats": "up"}
    assert (merged["processes"], merged["serves"]) == (2, ["kafka_to_nats", "nats_to_kafka"])
    assert merged["kafka_to_nats"]["delivered"] == 50
    assert merged["nats_to_kafka"]["delivered"] == 50

    n2k.kill()
    code, merged = await _status(nats_server, cfg.name)
    assert code == 1
    assert merged["health"]["status"] == "degraded"
    assert merged["health"]["missing"] == ["nats_to_kafka"]
    assert merged["processes"] == 1


@pytest.mark.slow
async def test_positions_carry_over_from_one_process_to_one_per_direction(
    nats_server: NatsServer,
    mesh: Mesh,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    bridge_process: Any,
) -> None:
    n = 200
    cfg = bridge_config(kafka, topics, tag)
    both = bridge_process(cfg)
    await both.start()
    first = await _send(mesh, kafka, topics, tag, "a", n)
    await both.wait_delivered(mesh.nc, "kafka_to_nats", n)
    await both.wait_delivered(mesh.nc, "nats_to_kafka", n)
    both.stop()  # SIGTERM: offsets committed, Kafka-confirmed events acked

    k2n = bridge_process(cfg, direction="kafka_to_nats")
    n2k = bridge_process(cfg, direction="nats_to_kafka")
    await k2n.start()
    await n2k.start()
    second = await _send(mesh, kafka, topics, tag, "b", n)
    k2n_status = await k2n.wait_delivered(mesh.nc, "kafka_to_nats", n)
    await n2k.wait_delivered(mesh.nc, "nats_to_kafka", n)
    # The consumer group's committed offsets: only the second batch was read from Kafka.
    assert k2n_status["received"] == n

    # The durable consumers' positions: nothing of the first batch went to Kafka again.
    sent_to_kafka = {e.event_id for e in first[1] + second[1]}
    records = await _out_records(kafka, topics, sent_to_kafka)
    ids = collections.Counter(decode(r.value()).event_id for r in records)
    assert set(ids) == sent_to_kafka
    assert max(ids.values()) == 1

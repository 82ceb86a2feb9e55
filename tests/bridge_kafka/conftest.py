"""A real Kafka 4 broker (KRaft, one node) for the bridge tests, beside the root
fixtures' real nats-server. The jars are fetched through Maven on first use."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge_kafka.bridge import Bridge
from bridge_kafka.broker import KafkaBroker, create_topics
from bridge_kafka.config import BridgeConfig, DirectionName
from bridge_kafka.process import BridgeProcess
from mesh.client import Mesh
from mesh.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    asyncio.run(broker.start_ready(timeout=180))
    yield broker
    broker.stop()


@pytest.fixture
def topics(kafka: KafkaBroker) -> dict[str, str]:
    """Topic names unique to one test: in (to NATS), out (from NATS), dlq."""
    t = uuid.uuid4().hex[:8]
    names = {"in": f"in-{t}", "out": f"out-{t}", "dlq": f"dlq-{t}"}
    create_topics(kafka.bootstrap, {names["in"]: 4, names["out"]: 4, names["dlq"]: 1})
    return names


def bridge_config(
    kafka: KafkaBroker, topics: dict[str, str], tag: str, **extra: object
) -> BridgeConfig:
    """Events of the test's symbol one way, the in-topic the other way."""
    base: dict[str, object] = {
        "bootstrap": kafka.bootstrap,
        "name": f"b{tag.lower()}",
        "dlq_topic": topics["dlq"],
        "inbound": [{"topics": [topics["in"]], "format": "event"}],
        "outbound": [{"filters": [f"tm.*.*.*.{tag}.>"], "topic": topics["out"]}],
    }
    return msgspec.convert(base | extra, BridgeConfig).validate()


@pytest.fixture
async def bridge(
    nats_server: NatsServer, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> AsyncIterator[Bridge]:
    async with (
        Mesh.connect(nats_server.url, service="bridge") as mesh,
        Bridge(bridge_config(kafka, topics, tag), mesh) as b,
    ):
        yield b


@pytest.fixture
def bridge_process(tmp_path: Path, nats_server: NatsServer) -> Iterator[Any]:
    made: list[BridgeProcess] = []

    def make(cfg: BridgeConfig, direction: DirectionName | None = None) -> BridgeProcess:
        p = BridgeProcess(cfg, nats_server.url, tmp_path, direction)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()

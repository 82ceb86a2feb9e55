"""A real Kafka 4 broker (KRaft, one node) for the bridge tests, beside the root
fixtures' real nats-server. The jars are fetched through Maven on first use."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from bridge_kafka.bridge import Bridge
from bridge_kafka.broker import KafkaBroker, create_topics
from bridge_kafka.config import BridgeConfig, status_subject
from mesh.client import Mesh
from mesh.server import NatsServer
from tests.helpers import eventually

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


class BridgeProcess:
    """`mesh bridge run` as a separate process, to be SIGKILLed and restarted."""

    def __init__(self, cfg: BridgeConfig, nats_url: str, workdir: Path) -> None:
        self.cfg = cfg
        self.nats_url = nats_url
        self.file = workdir / f"{cfg.name}.toml"
        self.file.write_text(_to_toml(cfg))
        self.log = workdir / f"{cfg.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "--url",
                self.nats_url,
                "bridge",
                "run",
                "-f",
                str(self.file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()

    async def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        await eventually(
            lambda: b"running" in self.log.read_bytes(), timeout, "the bridge process to start"
        )

    async def status(self, nc: Client) -> dict[str, Any]:
        msg = await nc.request(status_subject(self.cfg.name), b"", timeout=2.0)
        out: dict[str, Any] = json.loads(msg.data)
        return out

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _to_toml(cfg: BridgeConfig) -> str:
    def val(v: object) -> str:
        return json.dumps(v)

    lines = [
        f"{k} = {val(getattr(cfg, k))}"
        for k in (
            "bootstrap",
            "name",
            "dlq_topic",
            "dlq_subject",
            "max_record_bytes",
            "max_inflight_in",
            "max_inflight_out",
        )
    ]
    for r in cfg.inbound:
        lines.append("[[inbound]]")
        lines += [f"{k} = {val(v)}" for k, v in msgspec.structs.asdict(r).items()]
    for o in cfg.outbound:
        lines.append("[[outbound]]")
        lines += [f"{k} = {val(v)}" for k, v in msgspec.structs.asdict(o).items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def bridge_process(tmp_path: Path, nats_server: NatsServer) -> Iterator[Any]:
    made: list[BridgeProcess] = []

    def make(cfg: BridgeConfig) -> BridgeProcess:
        p = BridgeProcess(cfg, nats_server.url, tmp_path)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()

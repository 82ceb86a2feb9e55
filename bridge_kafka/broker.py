"""A real Apache Kafka 4.x broker (KRaft, one node that is broker and controller) on
loopback, for tests, the benchmark and the demo.

The jars come from Maven Central through `mvn dependency:copy-dependencies` on the small
pom next to this file, into a cache outside the repository
(`~/.cache/trademaster/kafka-<version>/libs`; Maven keeps its own download cache in
~/.m2). Nothing is committed and nothing else in the mesh needs Kafka.

    broker = KafkaBroker(tmp_dir)
    await broker.start_ready()      # fetches the jars the first time (~1 min)
    broker.bootstrap                # "127.0.0.1:<port>"
    broker.kill(); broker.start(); await broker.wait_ready()   # same ports, same data
    broker.stop()
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bridge_kafka.errors import KafkaBrokerError
from mesh.process import ChildProcess
from mesh.server import free_port

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
CACHE = Path(os.environ.get("TM_KAFKA_CACHE", Path.home() / ".cache" / "trademaster"))

# Main classes, checked in the 4.4.0 jars: the broker and `kafka-storage format` are in
# kafka_2.13; the console producer/consumer moved to kafka-tools in Kafka 4.
BROKER_MAIN = "kafka.Kafka"
STORAGE_MAIN = "kafka.tools.StorageTool"
CONSOLE_PRODUCER_MAIN = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER_MAIN = "org.apache.kafka.tools.consumer.ConsoleConsumer"
# "[12.345s] GC(7) Pause Young (Normal) (G1 Evacuation Pause) 60M->12M(768M) 4.321ms"
_GC_PAUSE = re.compile(r"GC\(\d+\) Pause .* (\d+(?:\.\d+)?)ms$", re.MULTILINE)


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return CACHE / f"kafka-{version}" / "libs"


def fetch(version: str = KAFKA_VERSION) -> Path:
    """The directory of the broker's jars, resolved through Maven the first time."""
    libs = libs_dir(version)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError("mvn not found: install Maven (apt-get install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise KafkaBrokerError(
            f"mvn could not fetch Kafka {version}: {(out.stdout + out.stderr)[-2000:]}"
        )
    # Written last, so an interrupted download is redone instead of half used.
    marker.write_text(version)
    return libs


def java_cmd(
    main: str,
    *args: str,
    heap: str = "512m",
    version: str = KAFKA_VERSION,
    jvm: tuple[str, ...] = (),
) -> list[str]:
    """A command line running one of the Kafka jars' main classes; `jvm`: more JVM
    options, after the defaults (so they win)."""
    java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError("java not found: Kafka 4 needs Java 17 or newer")
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        # C1 only, the broker included. A fresh broker's C2 compiler threads took ~0.4 of
        # a core for minutes (measured per thread in the benchmark's latency phase, after
        # its throughput phase): on 2 shared cores that starved the bridge and NATS, and
        # it cost the broker itself more than the faster code saved (NATS -> Kafka 28-31k/s
        # with C2, 43-45k/s with C1; docs/bridge.md). Tests and the demo start brokers
        # fresh and short-lived, which is exactly where C2 never pays back.
        "-XX:TieredStopAtLevel=1",
        *(["-XX:+UseStringDeduplication"] if main == BROKER_MAIN else []),
        *jvm,
        "-cp",
        f"{libs_dir(version)}/*",
        main,
        *args,
    ]


class KafkaBroker(ChildProcess):
    """One Kafka process; restartable on the same ports and log dirs (for fault tests)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        controller_port: int = 0,
        heap: str = "768m",
        version: str = KAFKA_VERSION,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.version = version
        self.extra = extra or {}

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def gc_log_path(self) -> Path:
        return self.data_dir / "gc.log"

    def gc_pauses_ms(self, offset: int = 0) -> tuple[list[float], int]:
        """The broker JVM's collection pauses (ms) logged from byte `offset` of its GC log
        on, and the offset to continue from."""
        try:
            with self.gc_log_path.open("rb") as f:
                f.seek(offset)
                text = f.read()
        except FileNotFoundError:
            return [], offset
        pauses = [float(m.group(1)) for m in _GC_PAUSE.finditer(text.decode(errors="replace"))]
        return pauses, offset + len(text)

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    def render_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},"
            f"CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "4",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A consumer group forms at once instead of after 3 s.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            # Room above the bridge's own record limit, so an oversized event reaches the
            # bridge and is dead-lettered with its reason instead of refused at produce.
            "message.max.bytes": "4194304",
            "log.flush.interval.messages": "9223372036854775807",
        } | self.extra
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def format_storage(self) -> None:
        """`kafka-storage format` once per data dir (a restart keeps what is stored)."""
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
        out = subprocess.run(
            java_cmd(
                STORAGE_MAIN,
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties_path),
                version=self.version,
            ),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise KafkaBrokerError(f"kafka-storage format failed: {out.stdout}{out.stderr}")

    def start(self) -> None:
        if self.running:
            return
        fetch(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(self.render_properties())
        self.format_storage()
        self.spawn(
            java_cmd(
                BROKER_MAIN,
                str(self.properties_path),
                heap=self.heap,
                version=self.version,
                jvm=(
                    # The whole heap from the start, its pages touched before serving:
                    # a growing heap kept the young generation small (a collection every
                    # 2-3 s at 2,000 records/s each way, up to 32 ms), and collecting
                    # into fresh pages added page faults to each pause. With both, the
                    # bench's latency phase saw 0-1 collections instead of 4-7, and
                    # the added p99 fell in three pairs of three (docs/bridge.md).
                    f"-Xms{self.heap}",
                    "-XX:+AlwaysPreTouch",
                    # Every collection's pause, for the latency analysis (docs/bridge.md).
                    f"-Xlog:gc:file={self.gc_log_path}:uptime",
                    *os.environ.get("TM_KAFKA_JVM_OPTS", "").split(),
                ),
            ),
            self.log_path,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the broker answers metadata requests and names itself as a broker."""

        async def named_in_metadata() -> str | None:
            try:
                # A plain connect first: librdkafka would log every refused attempt.
                _, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                if await asyncio.to_thread(self._metadata):
                    return None
                return "no broker in metadata yet"
            except Exception as e:  # librdkafka's KafkaException, timeouts
                return str(e)

        await self.wait_until_ready(
            named_in_metadata,
            what="Kafka",
            timeout=timeout,
            interval=0.2,
            error=KafkaBrokerError,
        )

    def _metadata(self) -> bool:
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 1000, "log_level": 0}
        )
        return bool(admin.list_topics(timeout=1.0).brokers)

    async def start_ready(self, timeout: float = 90.0) -> None:
        # The first fetch downloads ~100 MB through mvn: not on the event loop.
        await asyncio.to_thread(fetch, self.version)
        self.start()
        await self.wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        # A broker flushes its logs on SIGTERM; give it longer than a nats-server.
        super().stop(timeout)


def console_producer(bootstrap: str, topic: str, *props: str) -> list[str]:
    """Kafka's own kafka-console-producer, e.g. with "parse.key=true", "key.separator=|"."""
    args = ["--bootstrap-server", bootstrap, "--topic", topic]
    for p in props:
        args += ["--property", p]
    return java_cmd(CONSOLE_PRODUCER_MAIN, *args, heap="256m")


def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    timeout: float = 30.0,
    config: dict[str, str] | None = None,
) -> None:
    """Create topics (name -> partitions) if absent, each with `config` (topic settings);
    blocking, call through to_thread."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(t, n, 1, config=config or {}) for t, n in topics.items() if t not in existing
    ]
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout)
        except Exception as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise KafkaBrokerError(f"could not create topic {name}: {e}") from e

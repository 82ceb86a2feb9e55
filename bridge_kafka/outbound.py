"""NATS -> Kafka.

One durable JetStream consumer per rule (it resumes after the last acked event when the
bridge restarts). Each delivery is produced to Kafka by the idempotent producer (acks=all)
and acked to JetStream only when Kafka's delivery report says it is stored. A redelivery
of an event still in flight to Kafka is not produced again; the ack goes to its newest
delivery instead. Events that came from Kafka (origin header) are acked and not sent back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from confluent_kafka import KafkaError

from bridge_kafka import mapping
from bridge_kafka.config import BridgeConfig, OutboundRule
from bridge_kafka.feed import Passed, PassThrough
from bridge_kafka.kafka_io import ProducerThread
from bridge_kafka.metrics import Metrics
from mesh import jsapi
from mesh.client import Mesh
from mesh.subscriber import Start, SubscriptionOptions, ack_many

log = logging.getLogger("bridge_kafka")

DLQ_STREAM = "TM_BRIDGE_DLQ"


class _Pending:
    __slots__ = ("delivery", "event_id", "rule")

    def __init__(self, event_id: str, delivery: Passed, rule: OutboundRule) -> None:
        self.event_id = event_id
        self.delivery = delivery
        self.rule = rule


class Outbound:
    def __init__(
        self, cfg: BridgeConfig, mesh: Mesh, producer: ProducerThread, metrics: Metrics
    ) -> None:
        self.cfg = cfg
        self.mesh = mesh
        self.producer = producer
        self.metrics = metrics
        self.d = metrics.nats_to_kafka
        self._inflight: dict[str, _Pending] = {}
        self._subs: list[PassThrough] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: list[Passed] = []
        self._consumers: list[tuple[str, str]] = []

    async def start(self) -> None:
        await ensure_dlq_stream(self.mesh, self.cfg.dlq_subject)
        for i, rule in enumerate(self.cfg.outbound):
            durable = f"{self.cfg.durable}-{i}"
            opts = SubscriptionOptions(
                durable=durable,
                start=Start.all(),
                max_ack_pending=self.cfg.max_inflight_out,
                # Short, so a restarted bridge gets a crashed one's unacked events soon;
                # redeliveries of events still in flight to Kafka (a slow or absent
                # broker) are absorbed in _deliver_now, not produced twice.
                ack_wait=self.cfg.ack_wait,
            )
            sub = PassThrough(self.mesh, list(rule.filters), opts)
            await sub.start()
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._run(sub, rule), name="bridge-out"))

    async def _run(self, sub: PassThrough, rule: OutboundRule) -> None:
        while True:
            batch = await sub.take(1024)
            self.d.received += len(batch)
            loops = []
            deliver_now = self._deliver_now
            for d in batch:
                if mapping.nats_came_from_kafka(d):
                    loops.append(d)  # it came from Kafka: never sent back there
                elif not deliver_now(d, rule):
                    await self._deliver_later(d, rule)
            if loops:
                self.d.skipped_loop += len(loops)
                await ack_many(loops)

    def _deliver_now(self, d: Passed, rule: OutboundRule) -> bool:
        """The common case without a coroutine per event: True when done; False when it
        needs waiting (dead letter, a full producer queue), which `_deliver_later` does."""
        eid = d.fields.event_id
        pending = self._inflight.get(eid)
        if pending is not None:
            pending.delivery = d  # ack the newest delivery once Kafka confirms
            return True
        key, value, headers = mapping.nats_to_kafka(rule, d)
        if len(value) > self.cfg.max_record_bytes:
            return False
        return self._produce(_Pending(eid, d, rule), key, value, headers)

    def _produce(
        self, p: _Pending, key: bytes | None, value: bytes, headers: mapping.KafkaHeaders
    ) -> bool:
        """False when librdkafka's queue is full (Kafka is slow)."""
        try:
            self.producer.produce(p.rule.topic, key, value, headers, p)
        except BufferError:
            return False
        self._inflight[p.event_id] = p
        return True

    async def _deliver_later(self, d: Passed, rule: OutboundRule) -> None:
        """What `_deliver_now` could not finish, right after it (nothing ran between):
        a record too large for Kafka goes to the dead letters, a full queue is waited out."""
        key, value, headers = mapping.nats_to_kafka(rule, d)
        if len(value) > self.cfg.max_record_bytes:
            await self._dead_letter(d, "too large", f"{len(value)} > {self.cfg.max_record_bytes}")
            return
        p = _Pending(d.fields.event_id, d, rule)
        # librdkafka announces no room in its queue: try again shortly
        while not self._produce(p, key, value, headers):  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def on_report(self, p: _Pending, err: KafkaError | None) -> None:
        """Kafka's delivery report for one record (on the loop)."""
        if err is None:
            self._inflight.pop(p.event_id, None)
            self.d.delivered += 1
            self.metrics.kafka_up = True
            self._acks.append(p.delivery)
            return
        # With message.timeout.ms=0 only permanent errors get here (record too large for
        # the broker, topic authorization...): retrying cannot help, dead-letter it.
        self._inflight.pop(p.event_id, None)
        self.d.error(err.str())
        task = asyncio.ensure_future(self._dead_letter(p.delivery, "kafka refused", err.str()))
        self._tasks.append(task)

    async def flush_acks(self) -> None:
        """All acks confirmed since the last call, written as one burst and one flush."""
        acks, self._acks = self._acks, []
        if acks:
            await ack_many(acks)

    async def _dead_letter(self, d: Passed, reason: str, detail: str) -> None:
        subject = f"{self.cfg.dlq_subject}.{self.cfg.name}"
        hdr = (
            f"NATS/1.0\r\nNats-Msg-Id: dlq-{d.fields.event_id}\r\n"
            f"Tm-Dlq-Reason: {reason}\r\nTm-Dlq-Detail: {detail[:300]}\r\n"
            f"Tm-Dlq-Source: {d.stream}/{d.seq}\r\nTm-Dlq-At: {time.time_ns()}\r\n\r\n"
        ).encode()
        await self.mesh.publisher.publish_many([(subject, hdr, d.data)])  # as stored
        self.d.dlq += 1
        await d.ack()

    async def lag(self) -> dict[str, int]:
        """Events not yet delivered to the bridge, per JetStream consumer."""
        out: dict[str, int] = {}
        for i in range(len(self.cfg.outbound)):
            for stream in ("TM_CRITICAL", "TM_HIGH", "TM_STANDARD", "TM_BACKGROUND"):
                name = f"{self.cfg.durable}-{i}-{stream.removeprefix('TM_').lower()}"
                try:
                    info = await jsapi.call(
                        self.mesh.nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}", timeout=1.0
                    )
                except Exception:
                    continue
                out[f"{stream}/{name}"] = int(info.get("num_pending", 0)) + int(
                    info.get("num_ack_pending", 0)
                )
        return out

    def inflight(self) -> int:
        return len(self._inflight)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for s in self._subs:
            await s.close()


async def ensure_dlq_stream(mesh: Mesh, subject: str) -> None:
    """The bridge's own stream for NATS-side dead letters (created once, idempotent)."""
    config: dict[str, Any] = {
        "name": DLQ_STREAM,
        "subjects": [f"{subject}.>"],
        "storage": "file",
        "max_age": 7 * 24 * 3600 * 10**9,
        "duplicate_window": 120 * 10**9,
    }
    try:
        await jsapi.call(mesh.nc, f"$JS.API.STREAM.CREATE.{DLQ_STREAM}", config)
    except jsapi.JetStreamApiError as e:
        if "already in use" not in str(e) and e.err_code != 10058:
            raise

"""NATS -> Kafka.

One durable JetStream consumer per rule and priority stream (it resumes after the last
acked event when the bridge restarts). Each delivery is produced to Kafka by the
idempotent producer (acks=all) and counts as done only when Kafka's delivery report says
it is stored. The consumers ack with AckAll: one ack per batch covers every done delivery
before it, and never one that is not done (`ackfloor.AckFloor`). A redelivery of an event
in flight to Kafka, or done but not yet acked, is not produced again. Events that came
from Kafka (origin header) are done at once and never sent back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from confluent_kafka import KafkaError

from bridge_kafka import mapping
from bridge_kafka.ackfloor import NEW, AckFloor
from bridge_kafka.config import BridgeConfig, OutboundRule
from bridge_kafka.feed import Passed, PassThrough
from bridge_kafka.kafka_io import ProducerThread, Report, Sink
from bridge_kafka.metrics import Metrics, OnStop
from mesh import jsapi
from mesh.client import Mesh
from mesh.subscriber import Start, SubscriptionOptions, ack_many

log = logging.getLogger("bridge_kafka")

DLQ_STREAM = "TM_BRIDGE_DLQ"


class _Pending(Report):
    """A record in flight to Kafka: the delivery it came from and that delivery's floor."""

    __slots__ = ("delivery", "floor")

    def __init__(self, sink: Sink, floor: AckFloor, delivery: Passed) -> None:
        self._sink = sink  # (no super() call: this runs once per event)
        self.floor = floor
        self.delivery = delivery


class Outbound:
    def __init__(
        self,
        cfg: BridgeConfig,
        mesh: Mesh,
        producer: ProducerThread,
        metrics: Metrics,
        on_stop: OnStop,
    ) -> None:
        self.cfg = cfg
        self.mesh = mesh
        self.producer = producer
        self.metrics = metrics
        self.on_stop = on_stop  # the bridge's: a direction stopped for good
        self.d = metrics.nats_to_kafka
        self._subs: list[PassThrough] = []
        self._tasks: list[asyncio.Task[None]] = []
        # One per consumer (rule, stream): JetStream acks are per consumer.
        self._floors: list[AckFloor] = []
        self._consumer_of: dict[AckFloor, tuple[str, str]] = {}  # floor -> (stream, name)
        self._checking: set[AckFloor] = set()  # floors whose hold a task is checking
        self._reconnects = mesh.nc.stats["reconnects"]

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
                # broker) are recognised by the ack floor, not produced twice.
                ack_wait=self.cfg.ack_wait,
                ack="all",
            )
            sub = PassThrough(self.mesh, list(rule.filters), opts)
            await sub.start()
            self._subs.append(sub)
            floors: dict[str, AckFloor] = {}
            for stream, name in sub.consumers:
                floor = floors[stream] = AckFloor()
                self._floors.append(floor)
                self._consumer_of[floor] = (stream, name)
                if sub.unacked_at_start.get(stream):
                    floor.hold()  # a previous process's deliveries come back after ack_wait
            task = asyncio.create_task(self._run(sub, rule, floors), name="bridge-out")
            task.add_done_callback(self._stopped)
            self._tasks.append(task)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A rule's loop ended by an error (a bug): its events stop flowing, and the acks
        stop at the first one not done, so a restart redelivers the rest. Said loudly,
        for the supervisor to restart the process."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.on_stop(self.d, "nats -> kafka", exc)

    async def _run(self, sub: PassThrough, rule: OutboundRule, floors: dict[str, AckFloor]) -> None:
        # The per-event path, flat: this loop runs ~40,000 times a second and each Python
        # call it saves shows (py-spy); anything that needs waiting goes to `_deliver_later`.
        topic, max_bytes = rule.topic, self.cfg.max_record_bytes
        producer = self.producer
        produce, sink = producer.produce_now, producer.sink
        to_kafka, from_kafka = mapping.nats_to_kafka, mapping.nats_came_from_kafka
        while True:
            batch = await sub.take(1024)
            self.d.received += len(batch)
            skipped = 0
            for d in batch:
                floor = floors[d.stream]
                if floor.seen(d) is not NEW:
                    continue  # a redelivery: the newest delivery is what gets acked
                if d.malformed is not None:
                    await self._dead_letter(floor, d, "not an event", d.malformed)
                    continue
                if from_kafka(d):
                    floor.done(d.seq)  # it came from Kafka: never sent back there
                    skipped += 1
                    continue
                key, value, headers = to_kafka(rule, d)
                if len(value) <= max_bytes:
                    try:
                        produce(
                            topic, value, key, headers=headers, on_delivery=_Pending(sink, floor, d)
                        )
                        continue
                    except BufferError:
                        pass  # librdkafka's queue is full: waited out below
                await self._deliver_later(floor, d, rule, key, value, headers)
            producer.wake()
            if skipped:
                self.d.skipped_loop += skipped
                await self.flush_acks()

    def _produce(
        self,
        rule: OutboundRule,
        p: _Pending,
        key: bytes | None,
        value: bytes,
        headers: mapping.KafkaHeaders,
    ) -> bool:
        """False when librdkafka's queue is full (Kafka is slow)."""
        try:
            self.producer.produce(rule.topic, key, value, headers, p)
        except BufferError:
            return False
        return True

    async def _deliver_later(
        self,
        floor: AckFloor,
        d: Passed,
        rule: OutboundRule,
        key: bytes | None,
        value: bytes,
        headers: mapping.KafkaHeaders,
    ) -> None:
        """What `_run` could not finish at once, right after it (nothing ran between): a
        record too large for Kafka goes to the dead letters, a full queue is waited out."""
        if len(value) > self.cfg.max_record_bytes:
            detail = f"{len(value)} > {self.cfg.max_record_bytes}"
            await self._dead_letter(floor, d, "too large", detail)
            return
        p = _Pending(self.producer.sink, floor, d)
        # librdkafka announces no room in its queue: try again shortly
        while not self._produce(rule, p, key, value, headers):  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def on_report(self, p: _Pending, err: KafkaError | None) -> None:
        """Kafka's delivery report for one record (on the loop)."""
        if err is None:
            p.floor.done(p.delivery.seq)
            self.d.delivered += 1
            self.metrics.kafka_up = True
            return
        # With message.timeout.ms=0 only permanent errors get here (record too large for
        # the broker, topic authorization...): retrying cannot help, dead-letter it.
        self.d.error(err.str())
        self._spawn(self._dead_letter(p.floor, p.delivery, "kafka refused", err.str()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` in the background, kept (for `close` to cancel) while it runs: a
        long-lived bridge spawns one per refused record and per ack hold."""
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(work))

    async def flush_acks(self) -> None:
        """One AckAll per consumer for what is done since the last call, written as one
        burst and one flush; none while a floor holds (a connection was lost: held
        here too, since a lost delivery shows no gap until the next one arrives)."""
        nc = self.mesh.nc
        if not nc.is_connected:
            return  # an ack written now would go out after the reconnect, unchecked
        if nc.stats["reconnects"] != self._reconnects:
            self._reconnects = nc.stats["reconnects"]
            for floor in self._floors:
                floor.reconnected()
        for floor in self._floors:
            if floor.held and floor not in self._checking:
                self._checking.add(floor)
                self._spawn(self._check_hold(floor))
        acks = [t for f in self._floors if (t := f.ack_target()) is not None]
        if acks:
            await ack_many(acks)

    async def _check_hold(self, floor: AckFloor) -> None:
        """Asks the server, until it agrees, whether every message it has pending for the
        floor's consumer is known there (`AckFloor.checked`); then the held acks go."""
        stream, name = self._consumer_of[floor]
        try:
            while floor.held:
                cause = floor.cause
                try:
                    info = await jsapi.consumer_info(self.mesh.nc, stream, name, timeout=2.0)
                except Exception as e:  # NATS away: the hold stays, ask again
                    log.debug("hold check %s: %r", name, e)
                    await asyncio.sleep(0.5)
                    continue
                delivered = info.get("delivered", {})
                args = (
                    cause,
                    int(info.get("num_ack_pending", 0)),
                    int(delivered.get("consumer_seq", 0)),
                    int(delivered.get("stream_seq", 0)),
                )
                # Deliveries up to that moment are still arriving: `_run` takes them; a
                # poll, because this is rare (after a reconnect, a gap or a restart).
                while (agreed := floor.checked(*args)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                if not agreed:
                    # Unseen ones are still pending: their redelivery comes after ack_wait.
                    await asyncio.sleep(min(0.25, self.cfg.ack_wait / 4))
        finally:
            self._checking.discard(floor)
        await self.flush_acks()

    async def _dead_letter(self, floor: AckFloor, d: Passed, reason: str, detail: str) -> None:
        subject = f"{self.cfg.dlq_subject}.{self.cfg.name}"
        msg_id = d.fields.event_id or f"{d.stream}-{d.seq}"  # a malformed one has no id
        hdr = (
            f"NATS/1.0\r\nNats-Msg-Id: dlq-{msg_id}\r\n"
            f"Tm-Dlq-Reason: {reason}\r\nTm-Dlq-Detail: {detail[:300]}\r\n"
            f"Tm-Dlq-Source: {d.stream}/{d.seq}\r\nTm-Dlq-At: {time.time_ns()}\r\n\r\n"
        ).encode()
        await self.mesh.publisher.publish_many([(subject, hdr, d.data)])  # as stored
        self.d.dlq += 1
        floor.done(d.seq)
        await self.flush_acks()

    async def lag(self) -> dict[str, int]:
        """Events not yet delivered to the bridge, per JetStream consumer."""
        out: dict[str, int] = {}
        for i in range(len(self.cfg.outbound)):
            for stream in ("TM_CRITICAL", "TM_HIGH", "TM_STANDARD", "TM_BACKGROUND"):
                name = f"{self.cfg.durable}-{i}-{stream.removeprefix('TM_').lower()}"
                try:
                    info = await jsapi.consumer_info(self.mesh.nc, stream, name, timeout=1.0)
                except Exception:
                    continue
                out[f"{stream}/{name}"] = int(info.get("num_pending", 0)) + int(
                    info.get("num_ack_pending", 0)
                )
        return out

    def inflight(self) -> int:
        return sum(f.in_flight() for f in self._floors)

    def ack_holds(self) -> int:
        """How often acks were held for deliveries the bridge may not have seen."""
        return sum(f.holds for f in self._floors)

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

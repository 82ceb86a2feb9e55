"""Kafka -> NATS.

Batches come from the consumer thread in partition order and are handled one at a time:
every record of a batch is mapped (or set aside as poison), poison is written to the
dead-letter topic, the rest is published with every PubAck checked; only then are the
batch's offsets committed. A failed publish is retried, the same batch, until it
succeeds: a record is never skipped, so a committed offset always means "this record and
every earlier one of its partition is in JetStream (or in the DLQ)". A crash before the
commit redelivers the batch; its Nats-Msg-Ids make the second copy a duplicate that
JetStream does not store.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import cast

from confluent_kafka import Message, TopicPartition

from bridge_kafka import mapping
from bridge_kafka.config import BridgeConfig, InboundRule
from bridge_kafka.errors import Poison
from bridge_kafka.kafka_io import ConsumerThread, ProducerThread
from bridge_kafka.metrics import Metrics
from mesh.catalog import Catalog
from mesh.client import Mesh
from mesh.errors import MeshError

log = logging.getLogger("bridge_kafka")

# Batches published at once (see Inbound._run).
DEPTH = 3


class Inbound:
    def __init__(
        self,
        cfg: BridgeConfig,
        mesh: Mesh,
        catalog: Catalog,
        producer: ProducerThread,
        metrics: Metrics,
    ) -> None:
        self.cfg = cfg
        self.mesh = mesh
        self.catalog = catalog
        self.producer = producer
        self.metrics = metrics
        self.d = metrics.kafka_to_nats
        self.rules: dict[str, InboundRule] = {t: r for r in cfg.inbound for t in r.topics}
        self._queue: asyncio.Queue[list[Message]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.consumer: ConsumerThread | None = None
        # DLQ delivery reports: opaque future per poison record.
        self._max_bytes = min(cfg.max_record_bytes, mesh.nc._max_payload or cfg.max_record_bytes)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.consumer = ConsumerThread(
            {"bootstrap.servers": self.cfg.bootstrap, "group.id": self.cfg.group_id}
            | self.cfg.kafka,
            sorted(self.rules),
            loop,
            self._on_batches,
            self.cfg.max_inflight_in,
            self.d,
        )
        self.consumer.start()
        self._task = asyncio.create_task(self._run(), name="bridge-inbound")

    def _on_batches(self, batches: list[list[Message]]) -> None:
        for b in batches:
            self._queue.put_nowait(b)

    async def _run(self) -> None:
        # Up to DEPTH batches are published at once (frames go out in batch order on the
        # one connection, and each batch fits the publisher's window, so one batch never
        # waits for room in the middle of its frames); offsets are committed strictly in
        # batch order, when every earlier batch is acked too.
        room = asyncio.Semaphore(DEPTH)
        pending: collections.deque[asyncio.Task[tuple[int, list[TopicPartition]]]] = (
            collections.deque()
        )
        chunk = max(500, self.mesh.publisher.window // (DEPTH + 1))

        def commit_ready(_: object) -> None:
            assert self.consumer is not None
            while pending and pending[0].done():
                task = pending.popleft()
                room.release()
                if task.cancelled() or task.exception() is not None:
                    continue  # shutting down: not committed, redelivered next time
                n, offsets = task.result()
                self.consumer.done(n, offsets)

        while True:
            batch = await self._queue.get()
            # Take whatever else is waiting too, up to one window share.
            while not self._queue.empty() and len(batch) < chunk:
                batch.extend(self._queue.get_nowait())
            for i in range(0, len(batch), chunk):
                await room.acquire()
                task = asyncio.create_task(self._handle(batch[i : i + chunk]))
                pending.append(task)
                task.add_done_callback(commit_ready)

    async def _handle(self, batch: list[Message]) -> tuple[int, list[TopicPartition]]:
        d = self.d
        d.received += len(batch)
        items: list[tuple[str, bytes, bytes]] = []
        poison: list[tuple[Message, Poison]] = []
        next_offset: dict[tuple[str, int], int] = {}
        for m in batch:
            # Consumed messages always have these (None only on error events).
            topic, part, off = cast(str, m.topic()), cast(int, m.partition()), cast(int, m.offset())
            next_offset[(topic, part)] = off + 1
            headers = cast(mapping.KafkaHeaders | None, m.headers())
            if headers and mapping.came_from_nats(headers):
                d.skipped_loop += 1  # it came from NATS: never sent back there
                continue
            try:
                value = m.value()
                rule = self.rules[topic]
                event = mapping.kafka_to_event(
                    rule,
                    self.catalog,
                    topic,
                    part,
                    off,
                    m.key(),
                    value,
                    headers,
                    m.timestamp()[1],
                    self._max_bytes,
                )
                item = mapping.event_to_nats(
                    event,
                    self.catalog,
                    topic,
                    part,
                    off,
                    headers,
                    self._max_bytes,
                    value if rule.format == "event" else None,
                )
                items.append((item.subject, item.headers, item.payload))
            except Poison as p:
                poison.append((m, p))
        # Publish first: its frames are written before this task first waits, which is
        # what keeps concurrent batches in order on the wire.
        if items:
            await self._publish(items)
        d.delivered += len(items)
        if poison:
            await self._dead_letter(poison)
        return len(batch), [TopicPartition(t, p, o) for (t, p), o in next_offset.items()]

    async def _publish(self, items: list[tuple[str, bytes, bytes]]) -> None:
        delay = 0.1
        while True:
            try:
                await self.mesh.publisher.publish_many(items)
                self.metrics.nats_up = True
                return
            except MeshError as e:
                # The same batch again, same Nats-Msg-Ids: what was stored is a duplicate.
                self.d.error(str(e))
                self.metrics.nats_up = self.mesh.nc.is_connected
                log.warning("publish to JetStream failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _dead_letter(self, poison: list[tuple[Message, Poison]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            futures: list[asyncio.Future[None]] = []
            for m, p in poison:
                fut: asyncio.Future[None] = loop.create_future()
                futures.append(fut)
                headers: mapping.KafkaHeaders = [
                    *cast(mapping.KafkaHeaders, m.headers() or []),
                    ("tm-dlq-reason", p.reason.encode()),
                    ("tm-dlq-detail", p.detail[:500].encode()),
                    ("tm-dlq-source", f"{m.topic()}/{m.partition()}/{m.offset()}".encode()),
                    ("tm-dlq-at", str(time.time_ns()).encode()),
                ]
                value = m.value() or b""
                if len(value) > self.cfg.max_record_bytes:
                    value = value[: self.cfg.max_record_bytes // 2]  # kept for inspection
                self.producer.produce(self.cfg.dlq_topic, m.key(), value, headers, fut)
            errors = [e for e in await asyncio.gather(*futures, return_exceptions=True) if e]
            if not errors:
                self.d.dlq += len(poison)
                return
            self.d.error(f"dead-letter topic: {errors[0]}")
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self.consumer:
            await asyncio.to_thread(self.consumer.close)

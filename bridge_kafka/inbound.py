"""Kafka -> NATS.

Batches come from the consumer thread in partition order, a few handled at once: every
record of a batch is mapped (or set aside as poison), poison is written to the
dead-letter topic, the rest is stored as one fast batch per stream (mesh/fast_batch.py),
every event of it confirmed; only then are the batch's offsets committed, after every
earlier batch's. A failed publish is retried, the same batch, until it succeeds: a
record is never skipped, so a committed offset always means "this record and every
earlier one of its partition is in JetStream (or in the DLQ)". A crash before the commit
redelivers the batch; its Nats-Msg-Ids make the second copy a duplicate that JetStream
does not store. A batch that fails in a way no retry covers stops all commits (see
`Inbound._fail`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import cast

import nats.errors
from confluent_kafka import Message, TopicPartition

from bridge_kafka import mapping
from bridge_kafka.config import BridgeConfig, InboundRule
from bridge_kafka.errors import Poison
from bridge_kafka.kafka_io import ConsumerThread, FutureReport, ProducerThread
from bridge_kafka.metrics import Metrics, OnStop
from mesh.catalog import Catalog, Priority
from mesh.client import Mesh
from mesh.errors import MeshError
from mesh.fast_batch import BatchPublishDisabled, FastBatchPublisher
from mesh.publisher import Item

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
        on_stop: OnStop,
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
        # Batches being handled, oldest first (their offsets are committed in this order).
        self._handling: collections.deque[asyncio.Task[tuple[int, list[TopicPartition]]]] = (
            collections.deque()
        )
        self.consumer: ConsumerThread | None = None
        self._max_bytes = min(cfg.max_record_bytes, mesh.nc._max_payload or cfg.max_record_bytes)
        # False once a batch failed in a way no retry covers, or was cancelled: nothing is
        # committed after it.
        self._committing = True
        self.on_stop = on_stop  # the bridge's: a direction stopped for good
        # One confirmation per batch and stream instead of a PubAck per event.
        self._fast = FastBatchPublisher(
            mesh.nc,
            ack_timeout=mesh.publisher.ack_timeout,
            deadline=mesh.publisher.deadline,
        )
        self._no_fast_batch: set[Priority] = set()  # those whose stream refused them

    async def start(self) -> None:
        await self._fast.start()
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

    def _fail(self, exc: BaseException) -> None:
        self._committing = False
        if self._task is not None:
            self._task.cancel()
        for task in self._handling:
            task.cancel()  # never committed now: redelivered to the next run
        self.on_stop(self.d, "kafka -> nats", exc)

    def _on_batches(self, batches: list[list[Message]]) -> None:
        for b in batches:
            self._queue.put_nowait(b)

    async def _run(self) -> None:
        # Up to DEPTH batches are published at once (frames go out in batch order on the
        # one connection: each batch's are written whole before it first waits; the
        # chunk also fits the per-event publisher's window, the fallback's); offsets are
        # committed strictly in batch order, when every earlier batch is stored too.
        room = asyncio.Semaphore(DEPTH)
        pending = self._handling
        chunk = max(500, self.mesh.publisher.window // (DEPTH + 1))

        def commit_ready(_: object) -> None:
            assert self.consumer is not None
            while pending and pending[0].done() and self._committing:
                task = pending.popleft()
                room.release()
                if task.cancelled():
                    # Shutting down: this batch and every later one are not committed
                    # (redelivered to the next run), even those that finished first.
                    self._committing = False
                    return
                if (exc := task.exception()) is not None:
                    # Committing a later batch would skip this one's records: stop here,
                    # and let the process fail so a restart redelivers from the last commit.
                    self._fail(exc)
                    return
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
        # One fast batch per stream, that is per priority.
        streams: dict[Priority, list[Item]] = {}
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
                streams.setdefault(item.priority, []).append(
                    (item.subject, item.headers, item.payload)
                )
            except Poison as p:
                poison.append((m, p))
        # Dead letters are queued and the publish frames written before this task first
        # waits: that keeps concurrent batches in partition order, on the wire and in the
        # dead-letter topic.
        dead = self._dead_letter(poison) if poison else None
        try:
            if streams:
                await self._publish(streams)
            d.delivered += sum(len(items) for items in streams.values())
            if dead is not None:
                await dead
        finally:
            if dead is not None:
                dead.cancel()  # shutting down mid-batch: no retries after close
        return len(batch), [TopicPartition(t, p, o) for (t, p), o in next_offset.items()]

    async def _publish(self, streams: dict[Priority, list[Item]]) -> None:
        delay = 0.1
        while True:
            try:
                if len(streams) == 1:
                    [(priority, items)] = streams.items()
                    await self._store(priority, items)
                else:
                    await asyncio.gather(*(self._store(p, i) for p, i in streams.items()))
                self.metrics.nats_up = True
                return
            except (MeshError, nats.errors.Error) as e:
                # The same batch again, same Nats-Msg-Ids: what was stored is a duplicate.
                # (nats-py's own errors: its reconnect buffer was full during an outage.)
                self.d.error(str(e))
                self.metrics.nats_up = self.mesh.nc.is_connected
                log.warning("publish to JetStream failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _store(self, priority: Priority, items: list[Item]) -> None:
        if priority not in self._no_fast_batch:
            try:
                await self._fast.publish(items)
                return
            except BatchPublishDisabled as e:
                # A stream provisioned before fast batches: per-event acks still work.
                log.warning(
                    "%s; per-event PubAcks for that stream until the bridge restarts "
                    "(`mesh provision` turns fast batches on)",
                    e,
                )
                self._no_fast_batch.add(priority)
        await self.mesh.publisher.publish_many(items)

    def _dead_letter(self, poison: list[tuple[Message, Poison]]) -> asyncio.Future[None]:
        """Queues the dead letters now (in order, before the caller first waits); the
        future is done when Kafka confirmed them all."""
        first = self._produce_dead_letters(poison)

        async def confirmed() -> None:
            todo, futures = poison, first
            while True:
                results = await asyncio.gather(*futures, return_exceptions=True)
                failed = [(pm, r) for pm, r in zip(todo, results, strict=True) if r is not None]
                self.d.dlq += len(todo) - len(failed)
                if not failed:
                    return
                self.d.error(f"dead-letter topic: {failed[0][1]}")
                await asyncio.sleep(1.0)
                todo = [pm for pm, _ in failed]  # the confirmed ones are not sent twice
                futures = self._produce_dead_letters(todo)

        return asyncio.ensure_future(confirmed())

    def _produce_dead_letters(
        self, poison: list[tuple[Message, Poison]]
    ) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
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
            report = FutureReport(self.producer.sink, fut)
            try:
                self.producer.produce(self.cfg.dlq_topic, m.key(), value, headers, report)
            except BufferError as e:  # librdkafka's queue is full: counts as a failed send
                fut.set_exception(e)
        return futures

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        for task in self._handling:
            task.cancel()  # not committed: redelivered to the next run
        if self.consumer:
            await asyncio.to_thread(self.consumer.close)
        await self._fast.close()

"""librdkafka clients kept off the event loop.

confluent-kafka's `poll`/`consume` block in C; calling them on the asyncio loop would
stall every NATS read and ack. Each client gets one daemon thread that does nothing but
poll it; results reach the loop in batches through `call_soon_threadsafe`, at most one
pending wake-up at a time (a wake-up per record would cost more than the record).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from bridge_kafka.metrics import Direction, Metrics

log = logging.getLogger("bridge_kafka")


def _quiet_logger() -> logging.Logger:
    # librdkafka logs every refused connection to stderr; route it to Python logging.
    return logging.getLogger("bridge_kafka.librdkafka")


class _Wakeup:
    """Items appended from a thread, drained on the loop by one scheduled callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop, drain: Callable[[list[Any]], None]) -> None:
        self._loop = loop
        self._drain = drain
        self._items: collections.deque[Any] = collections.deque()
        self._pending = False
        self._lock = threading.Lock()

    def push(self, item: Any) -> None:
        self._items.append(item)
        with self._lock:
            if self._pending:
                return
            self._pending = True
        # RuntimeError: the loop is closed (shutting down); nothing is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            self._pending = False
        items: list[Any] = []
        pop = self._items.popleft
        while self._items:
            items.append(pop())
        if items:
            self._drain(items)


Sink = Callable[[tuple["Report", KafkaError | None]], None]


class Report:
    """A record's delivery-report callable (librdkafka's `on_delivery`): one object per
    record, a subclass per kind of record; the report comes back through the producer's
    `on_reports` as (this object, error or None). An object the record needs anyway, not
    a closure made per record: making that closure was ~9 % of the NATS -> Kafka thread
    (py-spy)."""

    __slots__ = ("_sink",)

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        self._sink((self, err))


class FutureReport(Report):
    """A record whose sender awaits its report."""

    __slots__ = ("future",)

    def __init__(self, sink: Sink, future: asyncio.Future[None]) -> None:
        self._sink = sink
        self.future = future

    def settle(self, err: KafkaError | None) -> None:
        if self.future.done():
            return
        if err is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(RuntimeError(err.str()))


class ProducerThread:
    """An idempotent producer (acks=all) served on the event loop: delivery reports come
    back as (Report, error or None) through `on_reports`, in batches.

    librdkafka does the network I/O in its own threads; what needs Python is `poll`, which
    runs the delivery callbacks. It used to run in a thread of its own, and every callback
    then fought the loop for the GIL and crossed back with `call_soon_threadsafe`: the
    profile of the NATS -> Kafka direction showed more time there than in producing.
    Polled from the loop (`_pump`), the callbacks are plain function calls."""

    def __init__(
        self,
        conf: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        on_reports: Callable[[list[tuple[Report, KafkaError | None]]], None],
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self._on_reports = on_reports
        self._reports: list[tuple[Report, KafkaError | None]] = []
        self.sink: Sink = self._reports.append  # what this producer's Reports are made with
        self.producer = Producer(
            {
                "enable.idempotence": True,
                "acks": "all",
                # 0 = never give up: a broker outage is waited out, in order, instead of
                # failing records that would then need resending (and could reorder).
                "message.timeout.ms": 0,
                "linger.ms": 1,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                # None: on a LAN the CPU and milliseconds of lz4 cost more than the bytes it
                # saves (decisions §21); `kafka = {"compression.type" = "lz4"}` for a WAN.
                "compression.type": "none",
                "statistics.interval.ms": 1000,
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                "logger": _quiet_logger(),
            }
            | conf
        )
        self._work = asyncio.Event()
        self._pump_task = loop.create_task(self._pump(), name="kafka-producer")
        # librdkafka's own produce, for a hot loop that calls `wake()` after its batch:
        # produce_now(topic, value, key, headers=..., on_delivery=report).
        self.produce_now = self.producer.produce

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        report: Report,
    ) -> None:
        """Non-blocking; raises BufferError when librdkafka's queue is full. `report` must
        be made with this producer's `sink`."""
        self.producer.produce(topic, value, key, headers=headers, on_delivery=report)
        self._work.set()

    def wake(self) -> None:
        """Records were produced (with `produce_now`): their reports are polled for."""
        self._work.set()

    def _poll(self) -> None:
        self.producer.poll(0)
        if self._reports:
            reports = self._reports.copy()  # the list stays: every Report's sink appends to it
            self._reports.clear()
            self._on_reports(reports)

    async def _pump(self) -> None:
        while True:
            if len(self.producer):  # records in flight: their reports come within ms
                self._poll()
                await asyncio.sleep(0.001)
            else:
                # idle: still poll now and then, for statistics and errors (health)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._work.wait()
                self._work.clear()
                self._poll()

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.metrics.kafka_up = False
            self.metrics.kafka_detail = err.str()
            log.warning("kafka: %s; records wait in the producer queue", err.str())
        else:
            # Every refused reconnect lands here while a broker is away: not a warning.
            log.debug("kafka producer: %s", err.str())

    def _on_stats(self, raw: str) -> None:
        stats = json.loads(raw)
        up = any(
            b.get("state") == "UP"
            for b in stats.get("brokers", {}).values()
            if b.get("nodeid", -1) >= 0
        )
        self.metrics.kafka_up = up
        if not up:
            self.metrics.kafka_detail = "no broker connection"

    def in_queue(self) -> int:
        return len(self.producer)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait (up to `timeout` s) for the records in flight, their reports delivered."""
        self._pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump_task
        deadline = time.monotonic() + timeout
        while len(self.producer) and time.monotonic() < deadline:
            self._poll()
            await asyncio.sleep(0.005)
        self._poll()


Batch = list[Message]

# Offsets that are done are committed at most this often (and always on revoke and close).
# A commit per handled batch was ~100 commits/s at 2,000 records/s, each a request and a
# write to __consumer_offsets in the broker; committing later only widens what a crash
# redelivers, and redelivered records are JetStream duplicates (same Nats-Msg-Id).
COMMIT_INTERVAL = 0.2
# The consumer thread's longest wait for a record: bounds how late a commit or a stop is.
POLL_WAIT = 0.1


class ConsumerThread:
    """A consumer-group member whose thread consumes batches, hands them to the loop, and
    commits the offsets the loop says are done (all in this one thread: commits are never
    issued concurrently with consume)."""

    def __init__(
        self,
        conf: dict[str, Any],
        topics: list[str],
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[list[Batch]], None],
        max_inflight: int,
        direction: Direction,
    ) -> None:
        self.direction = direction
        self.topics = topics
        self._wake = _Wakeup(loop, on_batch)
        self._commits: queue.SimpleQueue[list[TopicPartition]] = queue.SimpleQueue()
        self._inflight = 0
        self._inflight_lock = threading.Condition()
        self._max_inflight = max_inflight
        self._last_commit = 0.0
        self.consumer = Consumer(
            {
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "statistics.interval.ms": 1000,
                "stats_cb": self._on_stats,
                # A long poll: the broker answers a fetch as soon as a record arrives
                # (fetch.min.bytes=1), so waiting longer adds no latency. A 2 ms wait made
                # the consumer send ~500 empty fetches/s, broker CPU taken from everything
                # else on the machine.
                "fetch.wait.max.ms": 500,
                "logger": _quiet_logger(),
            }
            | conf
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)

    def start(self) -> None:
        self.consumer.subscribe(self.topics, on_revoke=self._on_revoke)
        self._thread.start()

    def done(self, n: int, offsets: list[TopicPartition]) -> None:
        """From the loop: `n` records are finished; commit `offsets` (next to read)."""
        if offsets:
            self._commits.put(offsets)
        with self._inflight_lock:
            self._inflight -= n
            self._inflight_lock.notify()

    def _commit_pending(self, sync: bool = False) -> None:
        if not sync and time.monotonic() - self._last_commit < COMMIT_INTERVAL:
            return
        self._last_commit = time.monotonic()
        merged: dict[tuple[str, int], int] = {}
        while True:
            try:
                for tp in self._commits.get_nowait():
                    k = (tp.topic, tp.partition)
                    merged[k] = max(merged.get(k, 0), tp.offset)
            except queue.Empty:
                break
        if merged:
            tps = [TopicPartition(t, p, o) for (t, p), o in merged.items()]
            try:
                if sync:
                    self.consumer.commit(offsets=tps, asynchronous=False)
                else:
                    self.consumer.commit(offsets=tps, asynchronous=True)
            except Exception as e:  # e.g. partitions no longer ours after a rebalance
                log.warning("kafka commit: %s", e)

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # What is done so far is committed now; the rest is redelivered to the next owner
        # and is a JetStream duplicate if it had been stored.
        self._commit_pending(sync=True)

    def _run(self) -> None:
        c = self.consumer
        while not self._stop.is_set():
            self._commit_pending()
            with self._inflight_lock:
                if self._inflight >= self._max_inflight:
                    # Backpressure: JetStream is slow or down. Waiting here (not in poll)
                    # keeps records in Kafka, where they are safe.
                    self._inflight_lock.wait(0.05)
                    continue
            # poll() returns as soon as one record is there; consume() waits for its whole
            # count or its timeout, so it only takes what is already fetched (timeout 0).
            # (A 5 ms consume timeout added up to 5 ms to every record and woke this
            # thread 200 times a second on an idle topic.)
            first = c.poll(POLL_WAIT)
            if first is None:
                continue
            more = min(5000, self._max_inflight) - 1
            msgs = [first, *(c.consume(num_messages=more, timeout=0) if more > 0 else [])]
            good = []
            for m in msgs:
                err = m.error()
                if err is None:
                    good.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    self.direction.error(err.str())
            if good:
                with self._inflight_lock:
                    self._inflight += len(good)
                self._wake.push(good)
        self._commit_pending(sync=True)

    def _on_stats(self, raw: str) -> None:
        stats = json.loads(raw)
        lag: dict[str, int] = {}
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                if pid != "-1" and p.get("consumer_lag", -1) >= 0:
                    lag[f"{topic}/{pid}"] = p["consumer_lag"]
        self.direction.lag = lag

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.consumer.close()

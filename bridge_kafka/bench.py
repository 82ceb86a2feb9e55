"""`mesh bench bridge`: throughput each way, then added latency at a steady rate.

With no arguments it starts a nats-server (with the streams) and a Kafka 4 broker on
loopback. Throughput: N events waiting at the source before the bridge starts, timed until
the bridge has every one confirmed by the destination (JetStream PubAck / Kafka delivery
report). Latency: both directions at `--rate` events/s each for `--seconds`.
`added_latency_ms`, the bridge's own: from the moment the source broker committed
the event to the moment the destination broker committed it, both stamped by the brokers
(Kafka's LogAppendTime, in ms, and the time JetStream stored the message, in ns), joined
through the position headers the bridge writes (`Tm-Kafka-Pos`, `tm-nats-pos`); with
Kafka's millisecond stamps each value is an upper bound, at most 1 ms high.
`end_to_end_ms` (only with `--end-to-end`): from the event's creation (just before it is
handed to the source) to its arrival at a reader on the other side: the added latency plus
the source's produce hop and the destination's delivery hop, which a reader of the source
system pays too. The added latency needs no reader during the window: the bench reads both
topics and both subjects back after it. Live readers cost CPU on the two cores the path
runs on (decisions §17), so they run only when asked; the Kafka-side one is a process of
its own (bridge_kafka.bench_reader: as a thread here it fought the load loop for the GIL).
The bridge runs as processes of its own (`mesh bridge run`): in the latency phase one per
direction (`--direction`, the recommended deployment); Kafka, NATS, the bridge and the
load generator share the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    Producer,
    TopicPartition,
)
from hdrh.histogram import HdrHistogram
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bridge_kafka.bench_reader import created_ns, latency_histogram, record_ns
from bridge_kafka.broker import KafkaBroker, create_topics
from bridge_kafka.config import DIRECTIONS, BridgeConfig
from bridge_kafka.errors import BridgeError
from bridge_kafka.mapping import HDR_KAFKA_POS, KAFKA_NATS_POS, KafkaHeaders, header
from bridge_kafka.process import BridgeProcess
from mesh import events as ev
from mesh import provision
from mesh.bench import host
from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer
from mesh.subscriber import Delivery, Start

WARMUP = 2.0


def _event(sym: str, i: int) -> Event:
    return Event(event_type="PRICE_UPDATE", symbol=sym, account="BENCH", payload={"px": i})


def _produce(bootstrap: str, topic: str, events: list[Event]) -> None:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    for e in events:
        while True:
            try:
                p.produce(topic, ev.encode(e), (e.symbol or "").encode())
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(60)


def _cfg(
    bootstrap: str, name: str, inbound: str | None, outbound: str | None, sym: str
) -> BridgeConfig:
    base: dict[str, Any] = {"bootstrap": bootstrap, "name": name, "dlq_topic": "bench-dlq"}
    if inbound:
        base["inbound"] = [{"topics": [inbound]}]
    if outbound:
        base["outbound"] = [{"filters": [f"tm.*.*.*.{sym}.>"], "topic": outbound}]
    return msgspec.convert(base, BridgeConfig).validate()


class Delivered(msgspec.Struct):
    per_s: float  # events/s from the first delivered event to the last
    cpu_us: float  # the bridge process's CPU (all threads) per event meanwhile


async def _delivered(proc: BridgeProcess, nc: Client, direction: str, n: int) -> Delivered:
    """Events/s from the first delivered event until `n` (the consumer group join or the
    consumer creation before the first event is start-up, not throughput), and the
    bridge's CPU per event from just before the first delivery: a figure the host's
    speed moves less than throughput, since the brokers' share of the 2 cores is not in
    it. The bridge's status is polled: a count inside another process is announced by
    nothing. Its `cpu_s` is the process's own CPU clock (all threads, ns resolution): the
    10 ms clock ticks of /proc read 0 over a short span, which a loaded host can leave."""
    deadline = time.perf_counter() + 150
    first: tuple[float, int, float] | None = None
    # The CPU is counted from the last poll that saw nothing delivered, over every event,
    # or, when no poll answered before deliveries began, over the same span as the rate.
    idle_cpu: float | None = None
    while time.perf_counter() < deadline:
        try:
            status = await proc.status(nc)
        except (TimeoutError, NatsTimeout, NoRespondersError):
            # Not subscribed yet, or busy: ask again, unless the process is gone.
            if proc.proc is None or proc.proc.poll() is not None:
                raise BridgeError(f"bridge process died: {proc.log.read_text()[-3000:]}") from None
            continue
        now, done, cpu = time.perf_counter(), status[direction]["delivered"], status["cpu_s"]
        if first is None:
            if done == 0:
                idle_cpu = cpu
            else:
                first = (now, done, cpu)
                if done >= n and idle_cpu is None:
                    raise BridgeError(
                        f"bench: all {n} events ({direction}) were delivered before the "
                        "bridge first answered; nothing to time (give more --events)"
                    )
        if done >= n and first is not None:
            events = max(n - first[1], 1)
            if idle_cpu is None:
                cpu_us = (cpu - first[2]) / events * 1e6
            else:
                cpu_us = (cpu - idle_cpu) / n * 1e6
            return Delivered(per_s=events / max(now - first[0], 1e-6), cpu_us=cpu_us)
        await asyncio.sleep(0.02)
    raise TimeoutError(f"bench: the bridge did not deliver {n} ({direction}) in time")


async def _throughput(url: str, bootstrap: str, n: int, work: Path) -> tuple[Delivered, Delivered]:
    run = uuid.uuid4().hex[:6].upper()
    k_in, k_out = f"bench-in-{run}", f"bench-out-{run}"
    await asyncio.to_thread(create_topics, bootstrap, {k_in: 4, k_out: 4, "bench-dlq": 1})
    syms = [f"K{run}{i}" for i in range(10)]
    await asyncio.to_thread(_produce, bootstrap, k_in, [_event(syms[i % 10], i) for i in range(n)])
    async with Mesh.connect(url, service="bench-bridge") as mesh:
        proc = BridgeProcess(_cfg(bootstrap, f"tin{run}", k_in, None, "x"), url, work)
        await proc.start()
        try:
            k2n = await _delivered(proc, mesh.nc, "kafka_to_nats", n)
        finally:
            proc.stop()
        sym = f"N{run}"
        events = [_event(sym, i) for i in range(n)]
        for i in range(0, n, 20000):
            await mesh.publish_many(events[i : i + 20000])
        del events
        proc = BridgeProcess(_cfg(bootstrap, f"tout{run}", None, k_out, sym), url, work)
        await proc.start()
        try:
            n2k = await _delivered(proc, mesh.nc, "nats_to_kafka", n)
        finally:
            proc.stop()
    return k2n, n2k


class _KafkaReader:
    """The Kafka-side latency reader as a child process (bridge_kafka.bench_reader): not
    a thread of this process, whose loop generates the load and reads the NATS side."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge_kafka.bench_reader", bootstrap, topic],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if line.strip() != b"ready":
            raise BridgeError(f"bench reader did not start: {line!r}")

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    async def result(self) -> HdrHistogram:
        """Creation -> receipt, per record created from the time told."""
        self.tell("stop")
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        await asyncio.to_thread(self.proc.wait, 30)
        return HdrHistogram.decode(line.strip())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Record(msgspec.Struct):
    """One record of a LogAppendTime topic, as the added-latency join needs it."""

    pos: str  # "topic/partition/offset"
    appended_ms: int  # the broker's append time
    nats_pos: str  # the bridge's `tm-nats-pos` header ("" if none)
    created_ns: int  # the event's creation time


def _kafka_records(bootstrap: str, topic: str, partitions: int) -> list[_Record]:
    """Every record of a LogAppendTime topic, read from the start to the end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex}"})
    try:
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        left = {p for p, end in ends.items() if end > 0}
        out: list[_Record] = []
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for m in c.consume(10000, 0.5):
                if m.error() is not None:
                    continue
                part, offset = m.partition(), m.offset()
                if part is None or offset is None:
                    continue
                kind, ms = m.timestamp()
                if kind == TIMESTAMP_LOG_APPEND_TIME:
                    nats_pos = header(cast(KafkaHeaders | None, m.headers()), KAFKA_NATS_POS)
                    created = created_ns(m.value())
                    out.append(_Record(f"{topic}/{part}/{offset}", ms, nats_pos or "", created))
                if offset + 1 >= ends[part]:
                    left.discard(part)
        return out
    finally:
        c.close()


async def _stored(mesh: Mesh, subjects: str, count: int) -> list[Delivery]:
    """The first `count` events of `subjects`, from the start of their stream: each with
    the time JetStream stored it (`stored_ns`) and its headers."""
    out: list[Delivery] = []
    async with mesh.subscribe(subjects, start=Start.all(), ack="none") as sub:
        while len(out) < count:
            out.append(await sub.next(timeout=30))
    return out


def _quantiles(h: HdrHistogram) -> dict[str, float]:
    return {
        "p50": round(h.get_value_at_percentile(50) / 1000, 2),
        "p99": round(h.get_value_at_percentile(99) / 1000, 2),
        "count": h.get_total_count(),
    }


def _added(
    since: int,
    k_in: list[_Record],
    k2n: list[Delivery],
    k_out: list[_Record],
    n_stored: list[Delivery],
) -> dict[str, HdrHistogram]:
    """Broker commit to broker commit, per event created from `since` on. Kafka stamps
    whole milliseconds: an append at `ms` happened within [ms, ms + 1), so a Kafka source
    counts from `ms` and a Kafka destination up to `ms + 1`: upper bounds, <= 1 ms high."""
    appended = {r.pos: r.appended_ms for r in k_in}
    k2n_h = latency_histogram()
    for d in k2n:
        ms = appended.get(d.headers.get(HDR_KAFKA_POS, ""))
        if d.event.timestamp >= since and ms is not None:
            record_ns(k2n_h, d.stored_ns - ms * 1_000_000)
    # The bridge writes "stream/seq"; the events all come from one subject's stream.
    stored = {d.seq: d.stored_ns for d in n_stored}
    n2k_h = latency_histogram()
    for r in k_out:
        ns = stored.get(int(r.nats_pos.rsplit("/", 1)[1])) if r.nats_pos else None
        if r.created_ns >= since and ns is not None:
            record_ns(n2k_h, (r.appended_ms + 1) * 1_000_000 - ns)
    return {"kafka_to_nats": k2n_h, "nats_to_kafka": n2k_h}


async def _latency(
    url: str,
    bootstrap: str,
    rate: int,
    seconds: float,
    work: Path,
    tick: float = 0.01,
    end_to_end: bool = False,
) -> dict[str, Any]:
    """Both directions at `rate` events/s for `seconds`. The added latency is read from
    the brokers after the window; with `end_to_end`, readers on both sides also time
    creation -> receipt during it (they cost CPU on the path being measured)."""
    run = uuid.uuid4().hex[:6].upper()
    k_in, k_out = f"lat-in-{run}", f"lat-out-{run}"
    # The brokers' own clocks mark when each event was committed on either side.
    await asyncio.to_thread(
        create_topics,
        bootstrap,
        {k_in: 4, k_out: 4},
        30.0,
        {"message.timestamp.type": "LogAppendTime"},
    )
    await asyncio.to_thread(create_topics, bootstrap, {"bench-dlq": 1})
    k2n_e2e = latency_histogram()
    ksym, nsym = f"K{run}", f"N{run}"
    # Events created in the first WARMUP seconds are not measured (consumer group joins,
    # first batches).
    since = 2**62
    reader = _KafkaReader(bootstrap, k_out) if end_to_end else None
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    with contextlib.ExitStack() as stack:
        if reader is not None:
            stack.callback(reader.kill)
            await reader.ready()
        # The bridge as one process per direction (decisions §22): neither waits for the
        # other's work in its interpreter.
        cfg = _cfg(bootstrap, f"lat{run}", k_in, k_out, nsym)
        procs = {d: BridgeProcess(cfg, url, work, direction=d) for d in DIRECTIONS}
        for proc in procs.values():
            stack.callback(proc.stop)
            await proc.start()
        async with (
            Mesh.connect(url, service="bench-bridge") as mesh,
            contextlib.AsyncExitStack() as live,
        ):
            await asyncio.sleep(2.0)  # consumer group joined, partitions assigned
            rx: asyncio.Task[None] | None = None
            if end_to_end:
                sub = await live.enter_async_context(
                    mesh.subscribe(f"tm.*.*.*.{ksym}.>", start=Start.new(), ack="none")
                )

                async def recv() -> None:
                    async for d in sub:
                        if d.event.timestamp >= since:
                            record_ns(k2n_e2e, time.time_ns() - d.event.timestamp)

                rx = asyncio.create_task(recv())
            per_tick = max(1, round(rate * tick))
            tick = per_tick / rate  # the rate exactly, whatever the rounding
            since = time.time_ns() + int(WARMUP * 1e9)
            if reader is not None:
                reader.tell(str(since))
            t_end = time.monotonic() + seconds + WARMUP
            i = 0
            next_t = time.monotonic()
            while time.monotonic() < t_end:
                batch_k = [_event(ksym, i + j) for j in range(per_tick)]
                for e in batch_k:
                    producer.produce(k_in, ev.encode(e), ksym.encode())
                producer.poll(0)
                await mesh.publish_many([_event(nsym, i + j) for j in range(per_tick)])
                i += per_tick
                next_t += tick
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            await asyncio.to_thread(producer.flush, 10)
            # Every event of the window confirmed by its destination (nothing else goes
            # through these bridges).
            status = {d: await p.wait_delivered(mesh.nc, d, i) for d, p in procs.items()}
            if rx is not None:
                rx.cancel()
            n2k_e2e = await reader.result() if reader is not None else None
            k2n = await _stored(mesh, f"tm.*.*.*.{ksym}.>", i)
            n_stored = await _stored(mesh, f"tm.*.*.*.{nsym}.>", i)
    k_in_recs = await asyncio.to_thread(_kafka_records, bootstrap, k_in, 4)
    k_out_recs = await asyncio.to_thread(_kafka_records, bootstrap, k_out, 4)
    added = _added(since, k_in_recs, k2n, k_out_recs, n_stored)
    out: dict[str, Any] = {
        "added": {d: _quantiles(h) for d, h in added.items()},
        "errors": {d: s["errors"] for d, s in status.items()},
    }
    if n2k_e2e is not None:
        out["end_to_end"] = {
            "kafka_to_nats": _quantiles(k2n_e2e),
            "nats_to_kafka": _quantiles(n2k_e2e),
        }
    return out


async def main(args: argparse.Namespace) -> int:
    probe = await host.probe_ms()
    with contextlib.ExitStack() as stack:
        url, bootstrap = args.nats, args.kafka
        if not url:
            nats = NatsServer(stack.enter_context(tempfile.TemporaryDirectory(prefix="bn-")))
            await nats.start_ready()
            stack.callback(nats.stop)
            await provision.apply_to(nats.url)
            url = nats.url
        kafka: KafkaBroker | None = None
        if not bootstrap:
            kafka = KafkaBroker(stack.enter_context(tempfile.TemporaryDirectory(prefix="bk-")))
            await kafka.start_ready(timeout=180)
            stack.callback(kafka.stop)
            bootstrap = kafka.bootstrap
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bb-")))
        k2n, n2k = await _throughput(url, bootstrap, args.events, work)
        print(f"throughput: kafka->nats {k2n}, nats->kafka {n2k}", flush=True)
        gc_from = kafka.gc_pauses_ms()[1] if kafka is not None else 0
        lat = await _latency(
            url, bootstrap, args.rate, args.seconds, work, args.tick_ms / 1000, args.end_to_end
        )
        # The broker's collection pauses during the latency phase (one cause of the tail).
        gc = kafka.gc_pauses_ms(gc_from)[0] if kafka is not None else None
        print(f"latency at {args.rate}/s each way: {json.dumps(lat)}", flush=True)
    print(
        json.dumps(
            {
                "kafka_to_nats_per_s": round(k2n.per_s),
                "nats_to_kafka_per_s": round(n2k.per_s),
                # What the bridge process costs per event in each throughput phase.
                "bridge_cpu_us_per_event": {
                    "kafka_to_nats": round(k2n.cpu_us, 1),
                    "nats_to_kafka": round(n2k.cpu_us, 1),
                },
                "added_latency_ms": lat["added"],
                **({"end_to_end_ms": lat["end_to_end"]} if "end_to_end" in lat else {}),
                "events": args.events,
                "latency_rate_per_s": args.rate,
                "latency_tick_ms": args.tick_ms,
                **(
                    {
                        "kafka_gc_pauses": {
                            "count": len(gc),
                            "max_ms": max(gc, default=0.0),
                            "sum_ms": round(sum(gc), 1),
                        }
                    }
                    if gc is not None
                    else {}
                ),
                "host_probe_ms": probe,
            }
        )
    )
    return 0

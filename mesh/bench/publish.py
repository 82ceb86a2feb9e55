"""`mesh bench publish`: acked throughput of one publisher process, then latency under load.

Phase 1 (throughput): one process publishes as fast as every event can be acknowledged
(pipelined, each PubAck checked) for `--seconds`; repeated `--runs` times.
Phase 2 (latency): a fixed mixed load (`--rate` events/s across all four priorities) while
a consumer in another process records publish timestamp -> receipt in HDR histograms.

The last line printed is one JSON object, so runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from hdrh.histogram import HdrHistogram

from mesh import provision, server
from mesh.bench import host
from mesh.catalog import Priority
from mesh.client import Mesh
from mesh.events import Event

# Mixed load by priority: mostly market data and orders, a steady trickle of the rest.
MIX = [
    (Priority.CRITICAL, "MARGIN_CALL", 0.05),
    (Priority.HIGH, "PRICE_UPDATE", 0.60),
    (Priority.STANDARD, "PNL_CHANGE", 0.25),
    (Priority.BACKGROUND, "USER_NOTIFICATION", 0.10),
]
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "BRK.B", "AMZN", "META", "GOOG"]


def _event(i: int, event_type: str) -> Event:
    return Event(
        event_type=event_type,
        symbol=SYMBOLS[i % len(SYMBOLS)],
        account=f"ACC{i % 97:03d}",
        payload={"i": i, "price": 100.0 + (i % 500) / 100},
    )


async def throughput(
    url: str, seconds: float, chunk: int = 2048, lanes: int = 4
) -> tuple[int, float]:
    """`lanes` publish_many calls in flight at once, so the pipeline never drains while
    one call waits for its last acks."""
    async with Mesh.connect(url, service="bench") as mesh:
        counter = iter(range(1 << 62))
        start = time.perf_counter()
        deadline = start + seconds

        async def lane() -> int:
            sent = 0
            while time.perf_counter() < deadline:
                base = next(counter) * chunk
                await mesh.publish_many([_event(base + k, "PRICE_UPDATE") for k in range(chunk)])
                sent += chunk
            return sent

        n = sum(await asyncio.gather(*(lane() for _ in range(lanes))))
        return n, time.perf_counter() - start


def _consumer(url: str, conn: Connection) -> None:
    asyncio.run(_consume(url, conn))


async def _consume(url: str, conn: Connection) -> None:
    hists = {p: HdrHistogram(1, 60_000_000, 3) for p in Priority}  # microseconds
    async with (
        Mesh.connect(url, service="bench-consumer") as mesh,
        mesh.subscribe("tm.>", ack="none") as sub,
    ):

        async def record() -> None:
            while True:
                d = await sub.next()
                hists[d.priority].record_value(max(1, (time.time_ns() - d.event.timestamp) // 1000))

        recorder = asyncio.create_task(record())
        conn.send("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        loop.remove_reader(conn.fileno())
        recorder.cancel()
    conn.recv()
    conn.send({p.value: h.encode() for p, h in hists.items()})


async def latency(url: str, seconds: float, rate: int) -> tuple[dict[str, Any], int]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_consumer, args=(url, child), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, parent.recv) == "ready"
    tick = 0.005
    per_tick = max(1, round(rate * tick))
    sent = 0
    async with Mesh.connect(url, service="bench") as mesh:
        start = time.perf_counter()
        ticks = int(seconds / tick)
        pending: set[asyncio.Task[list[int]]] = set()
        for t in range(ticks):
            batch = []
            for k in range(per_tick):
                i = sent + k
                r = (i * 0.6180339887) % 1.0  # deterministic spread over the mix
                acc = 0.0
                for _, etype, share in MIX:
                    acc += share
                    if r < acc:
                        batch.append(_event(i, etype))
                        break
            sent += len(batch)
            task = asyncio.create_task(mesh.publish_many(batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
            # Fixed rate: sleep until the next tick's slot, never catch up in a burst.
            delay = start + (t + 1) * tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending)
    # Let the consumer see the tail, then collect its histograms.
    await asyncio.sleep(0.5)
    parent.send("stop")
    encoded = await loop.run_in_executor(None, parent.recv)
    proc.join(10)
    out = {}
    for prio, enc in encoded.items():
        h = HdrHistogram.decode(enc)
        out[prio] = {
            "p50": h.get_value_at_percentile(50) / 1000,
            "p99": h.get_value_at_percentile(99) / 1000,
            "p999": h.get_value_at_percentile(99.9) / 1000,
            "count": h.get_total_count(),
        }
    return out, sent


async def main(args: argparse.Namespace) -> int:
    probe = await host.probe_ms()
    embedded = None
    url = args.url
    tmp = tempfile.TemporaryDirectory(prefix="mesh-bench-")
    if not url:
        embedded = server.NatsServer(tmp.name)
        await embedded.start_ready()
        url = embedded.url
        await provision.apply_to(url)
    try:
        runs = []
        total_events, total_secs = 0, 0.0
        for r in range(args.runs):
            n, secs = await throughput(url, args.seconds)
            runs.append(round(n / secs))
            total_events += n
            total_secs += secs
            print(
                f"throughput run {r + 1}: {n} events acked in {secs:.2f}s = {n / secs:,.0f}/s",
                flush=True,
            )
        lat, sent = await latency(url, args.seconds, args.rate)
        for prio, v in lat.items():
            print(
                f"latency {prio:<10} p50 {v['p50']:.2f} ms  p99 {v['p99']:.2f} ms  "
                f"p999 {v['p999']:.2f} ms  ({v['count']} events)",
                flush=True,
            )
        summary = {
            "bench": "publish",
            "events_per_s": round(statistics.median(runs)),
            "runs_events_per_s": runs,
            "latency_ms": {p: {k: v[k] for k in ("p50", "p99", "p999")} for p, v in lat.items()},
            "latency_rate_per_s": args.rate,
            "latency_events": sent,
            "events": total_events + sent,
            "seconds": round(total_secs + args.seconds, 2),
            "nats_server_version": server.server_version(),
            "publisher_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "host_probe_ms": probe,
        }
        print(json.dumps(summary), flush=True)
        return 0
    finally:
        if embedded is not None:
            embedded.stop()
        tmp.cleanup()

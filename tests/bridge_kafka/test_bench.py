"""The bridge benchmark's latency measurement, on a real broker, bridge process and
nats-server: every measured event is joined with its commit on both sides, and the
bridge's own part (broker commit to broker commit, read back from both brokers after the
window) is inside the end-to-end time the live readers measured during it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bridge_kafka.bench import _delivered, _latency, _throughput
from bridge_kafka.broker import KafkaBroker
from mesh.server import NatsServer


async def test_added_latency_is_joined_for_every_event_and_within_end_to_end(
    nats_server: NatsServer, kafka: KafkaBroker, tmp_path: Path
) -> None:
    lat = await _latency(
        nats_server.url, kafka.bootstrap, rate=500, seconds=1.0, work=tmp_path, end_to_end=True
    )
    for direction in ("kafka_to_nats", "nats_to_kafka"):
        added, e2e = lat["added"][direction], lat["end_to_end"][direction]
        assert e2e["count"] >= 500, direction
        assert added["count"] == e2e["count"], direction
        # Per event: created < source commit and destination commit < receipt, and the
        # Kafka side is counted up to 1 ms high, so added <= end-to-end + 1 ms holds at
        # every percentile.
        for q in ("p50", "p99"):
            assert added[q] <= e2e[q] + 1.01, (direction, q, lat)
    assert lat["errors"] == {"kafka_to_nats": 0, "nats_to_kafka": 0}


def test_broker_gc_pauses_are_read_from_its_gc_log_from_an_offset(kafka: KafkaBroker) -> None:
    """The bench's `kafka_gc_pauses`: a collection forced in the real broker is read back
    as one pause, and only what was logged after the offset counts. `jcmd GC.run` returns
    once the collection is done, and the JVM logs it synchronously before that."""
    before, offset = kafka.gc_pauses_ms()
    assert offset > 0  # the JVM logs its collector at start-up
    assert kafka.proc is not None
    jcmd = Path(shutil.which("java") or "java").resolve().parent / "jcmd"
    subprocess.run([str(jcmd), str(kafka.proc.pid), "GC.run"], check=True, capture_output=True)
    pauses, end = kafka.gc_pauses_ms(offset)
    assert pauses, "the forced collection was not read"  # a young one may come too
    assert all(ms > 0 for ms in pauses)
    assert end > offset
    assert len(kafka.gc_pauses_ms()[0]) == len(before) + len(pauses)


async def test_throughput_phase_reports_rate_and_bridge_cpu_per_event(
    nats_server: NatsServer, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """Both directions deliver every event and each phase reports events/s and the
    bridge process's CPU per event (a real bridge process spends some on each)."""
    # Enough events for the phases to last long enough for CPU clock ticks to count.
    k2n, n2k = await _throughput(nats_server.url, kafka.bootstrap, 30_000, tmp_path)
    for phase in (k2n, n2k):
        assert phase.per_s > 0
        assert 0 < phase.cpu_us < 1_000_000


class _LateStatus:
    """A bridge process as `_delivered` sees it, whose status answers are scripted: the
    first says nothing was delivered, the second comes 0.5 s later (a loaded host) and
    says everything was. The process is real and busy, so its CPU clock runs meanwhile."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        self.log = Path("/dev/null")

    async def status(self, _nc: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            return {"k": {"delivered": 0}}
        await asyncio.sleep(0.5)
        return {"k": {"delivered": self.n}}


async def test_cpu_per_event_counts_every_event_when_deliveries_are_first_seen_late() -> None:
    """Until 2026-11-28 the CPU was counted from the first poll that saw a delivery: when
    that poll saw them all, the span was empty and the bench reported 0 us per event
    (seen once in a full run on a loaded host). It is counted from the last poll that saw
    none, over every event."""
    fake = _LateStatus(30_000)
    try:
        phase = await _delivered(fake, None, "k", 30_000)  # type: ignore[arg-type]
    finally:
        fake.proc.kill()
        fake.proc.wait()
    assert fake.calls == 2
    # ~0.5 s of a busy process over 30,000 events: ~17 us each; at least one clock tick.
    assert 0 < phase.cpu_us < 100

"""The bridge benchmark's latency measurement, on a real broker, bridge process and
nats-server: every measured event is joined with its commit on both sides, and the
bridge's own part (broker commit to broker commit, read back from both brokers after the
window) is inside the end-to-end time the live readers measured during it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bridge_kafka.bench import Delivered, _delivered, _latency, _throughput
from bridge_kafka.broker import KafkaBroker
from bridge_kafka.errors import BridgeError
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
    k2n, n2k = await _throughput(nats_server.url, kafka.bootstrap, 30_000, tmp_path)
    for phase in (k2n, n2k):
        assert phase.per_s > 0
        assert 0 < phase.cpu_us < 1_000_000


class _Scripted:
    """A bridge process as `_delivered` sees it, whose status answers are scripted:
    (delivered, the process's CPU seconds) per poll, as a loaded host can space them."""

    def __init__(self, answers: list[tuple[int, float]]) -> None:
        self.answers = answers
        self.proc = None
        self.log = Path("/dev/null")

    async def status(self, _nc: Any) -> dict[str, Any]:
        done, cpu = self.answers.pop(0)
        return {"cpu_s": cpu, "k": {"delivered": done}}


async def _phase(answers: list[tuple[int, float]], n: int) -> Delivered:
    return await _delivered(_Scripted(answers), None, "k", n)  # type: ignore[arg-type]


async def test_cpu_per_event_counts_from_the_last_poll_that_saw_nothing_delivered() -> None:
    """Until 2026-11-28 the CPU came from /proc's 10 ms clock ticks, counted from the
    first poll that saw a delivery: on a loaded host that poll came late, the span held no
    tick, and the bench reported 0 us per event (a full run under load failed on it).
    Now: the bridge's own CPU clock, from the last poll that saw none, over every event."""
    phase = await _phase([(0, 1.0), (0, 1.1), (25_000, 1.35), (30_000, 1.4)], 30_000)
    assert phase.cpu_us == pytest.approx(0.3 / 30_000 * 1e6)  # from the poll at 1.1 s
    # Every event delivered by the first answer after the idle one: still counted.
    phase = await _phase([(0, 2.0), (30_000, 2.3)], 30_000)
    assert phase.cpu_us == pytest.approx(0.3 / 30_000 * 1e6)


async def test_cpu_per_event_without_an_idle_poll_uses_the_span_of_the_rate() -> None:
    phase = await _phase([(20_000, 5.0), (30_000, 5.1)], 30_000)
    assert phase.cpu_us == pytest.approx(0.1 / 10_000 * 1e6)


async def test_a_phase_over_before_the_first_answer_is_an_error_not_a_figure() -> None:
    with pytest.raises(BridgeError, match="before the bridge first answered"):
        await _phase([(30_000, 5.0)], 30_000)

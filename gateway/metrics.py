"""Prometheus text metrics, kept as plain counters (no client library needed)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable

from gateway.gcwatch import GcWatch

# Event age at send (publish timestamp -> handed to the socket), milliseconds.
BUCKETS_MS = (0.5, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 5000)


class Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.n = 0
        self.total = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, v)] += 1
        self.n += 1
        self.total += v


class Metrics:
    def __init__(self) -> None:
        self.connections = 0
        self.connections_total = 0
        self.events_out: Counter[str] = Counter()  # by priority
        self.frames_out = 0
        self.conflated = 0
        self.dropped_market = 0
        self.dropped_critical = 0  # must stay 0: such sessions are closed instead
        self.disconnects: Counter[str] = Counter()  # by reason
        self.rejected: Counter[str] = Counter()  # auth/limit refusals by code
        self.errors: Counter[str] = Counter()  # error frames by code
        self.latency: dict[str, Histogram] = {}
        # Event age when the gateway takes it from NATS (publish -> fan-out starts).
        self.arrival: dict[str, Histogram] = {}
        # Wall time of one flush pass over the sessions with events queued.
        self.flush_pass = Histogram()
        self.flush_pass_cpu = Histogram()  # CPU time of the process's thread in a pass
        self.queue_depth: Callable[[], dict[str, int]] = dict
        self.groups: Callable[[], int] = lambda: 0
        # Which process answered: behind SO_REUSEPORT any of them may.
        self.instance = ""
        self.gc: GcWatch | None = None

    def age(self, priority: str, ms: float) -> None:
        self.latency_of(priority).observe(ms)

    def latency_of(self, priority: str) -> Histogram:
        """The age-at-send histogram of a priority (a chunk keeps it: one lookup per
        chunk, not per frame)."""
        h = self.latency.get(priority)
        if h is None:
            h = self.latency[priority] = Histogram()
        return h

    def arrived(self, priority: str, ms: float) -> None:
        h = self.arrival.get(priority)
        if h is None:
            h = self.arrival[priority] = Histogram()
        h.observe(ms)

    def render(self) -> str:
        out: list[str] = []

        def line(name: str, value: float, labels: str = "") -> None:
            out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")

        def histogram(name: str, p: str, h: Histogram) -> None:
            acc = 0
            for b, c in zip((*BUCKETS_MS, "+Inf"), h.counts, strict=True):
                acc += c
                line(f"{name}_bucket", acc, f'priority="{p}",le="{b}"')
            line(f"{name}_sum", round(h.total, 3), f'priority="{p}"')
            line(f"{name}_count", h.n, f'priority="{p}"')

        out.append("# TYPE gateway_info gauge")
        line("gateway_info", 1, f'instance="{self.instance}"')
        out.append("# TYPE gateway_connections gauge")
        line("gateway_connections", self.connections)
        out.append("# TYPE gateway_connections_total counter")
        line("gateway_connections_total", self.connections_total)
        out.append("# TYPE gateway_shared_subscriptions gauge")
        line("gateway_shared_subscriptions", self.groups())
        out.append("# TYPE gateway_events_out_total counter")
        for p, n in sorted(self.events_out.items()):
            line("gateway_events_out_total", n, f'priority="{p}"')
        out.append("# TYPE gateway_frames_out_total counter")
        line("gateway_frames_out_total", self.frames_out)
        out.append("# TYPE gateway_queue_depth gauge")
        for p, n in sorted(self.queue_depth().items()):
            line("gateway_queue_depth", n, f'priority="{p}"')
        out.append("# TYPE gateway_conflated_total counter")
        line("gateway_conflated_total", self.conflated)
        out.append("# TYPE gateway_dropped_total counter")
        line("gateway_dropped_total", self.dropped_market, 'kind="market"')
        line("gateway_dropped_total", self.dropped_critical, 'kind="critical"')
        out.append("# TYPE gateway_disconnects_total counter")
        for r, n in sorted(self.disconnects.items()):
            line("gateway_disconnects_total", n, f'reason="{r}"')
        out.append("# TYPE gateway_rejected_total counter")
        for r, n in sorted(self.rejected.items()):
            line("gateway_rejected_total", n, f'code="{r}"')
        out.append("# TYPE gateway_error_frames_total counter")
        for r, n in sorted(self.errors.items()):
            line("gateway_error_frames_total", n, f'code="{r}"')
        out.append("# TYPE gateway_event_age_ms histogram")
        for p, h in sorted(self.latency.items()):
            histogram("gateway_event_age_ms", p, h)
        out.append("# TYPE gateway_event_arrival_age_ms histogram")
        for p, h in sorted(self.arrival.items()):
            histogram("gateway_event_arrival_age_ms", p, h)
        out.append("# TYPE gateway_flush_pass_ms histogram")
        histogram("gateway_flush_pass_ms", "all", self.flush_pass)
        out.append("# TYPE gateway_flush_pass_cpu_ms histogram")
        histogram("gateway_flush_pass_cpu_ms", "all", self.flush_pass_cpu)
        if self.gc is not None:
            out.append("# TYPE gateway_gc_collections_total counter")
            for g, n in enumerate(self.gc.count):
                line("gateway_gc_collections_total", n, f'generation="{g}"')
            out.append("# TYPE gateway_gc_pause_ms_total counter")
            for g, ms in enumerate(self.gc.total_ms):
                line("gateway_gc_pause_ms_total", round(ms, 3), f'generation="{g}"')
            out.append("# TYPE gateway_gc_freezes_total counter")
            line("gateway_gc_freezes_total", self.gc.freezes)
            line("gateway_gc_unfreezes_total", self.gc.unfreezes)
            out.append("# TYPE gateway_gc_pause_ms_max gauge")
            for g, ms in enumerate(self.gc.max_ms):
                line("gateway_gc_pause_ms_max", round(ms, 3), f'generation="{g}"')
        return "\n".join(out) + "\n"

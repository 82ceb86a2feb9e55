"""Garbage-collector pauses, measured with `gc.callbacks`.

A full (generation-2) collection stops the whole event loop for as long as it takes to
walk every tracked object: with ~500 sessions per gateway process that was seen at
90-160 ms, the size of the latency p99. This records, per generation, how many
collections ran, their total and longest pause, so the gateway's `/metrics` and the
benchmark's load generator can show them."""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any


class GcWatch:
    __slots__ = ("_t", "count", "max_ms", "recent", "since", "total_ms")

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.since = time.time()
        # (wall time, generation, ms) of the latest full collections and of any pause
        # of 5 ms or more, so a benchmark can pick those inside its measured window.
        self.recent: deque[tuple[float, int, float]] = deque(maxlen=2000)
        self._t = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter_ns()
            return
        ms = (time.perf_counter_ns() - self._t) / 1e6
        g = info["generation"]
        self.count[g] += 1
        self.total_ms[g] += ms
        if ms > self.max_ms[g]:
            self.max_ms[g] = ms
        if g == 2 or ms >= 5:
            self.recent.append((time.time(), g, round(ms, 2)))

    def install(self) -> GcWatch:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def reset(self) -> None:
        """Forget what was seen so far (e.g. at the start of a measured window)."""
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.since = time.time()

    def summary(self) -> dict[str, dict[str, float]]:
        return {f"gen{g}": {"n": self.count[g], "total_ms": round(self.total_ms[g], 1),
                            "max_ms": round(self.max_ms[g], 1)} for g in range(3)}


WATCH = GcWatch()

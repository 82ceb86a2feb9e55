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
    __slots__ = ("_t", "count", "freezes", "max_ms", "recent", "since", "total_ms",
                 "unfreezes")

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.since = time.time()
        # (wall time, generation, ms) of the latest full collections and of any pause
        # of 5 ms or more, so a benchmark can pick those inside its measured window.
        self.recent: deque[tuple[float, int, float]] = deque(maxlen=2000)
        self.freezes = self.unfreezes = 0  # BurstFreezer's gc.freeze() / gc.unfreeze()
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

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f"gen{g}": {"n": self.count[g], "total_ms": round(self.total_ms[g], 1),
                        "max_ms": round(self.max_ms[g], 1)} for g in range(3)}
        out["freezes"], out["unfreezes"] = self.freezes, self.unfreezes
        return out


WATCH = GcWatch()


class BurstFreezer:
    """`gc.freeze()` after a burst of connections, so full collections stop walking them.

    Each connection brings a few hundred GC-tracked objects (the server's protocol
    objects, tasks, queues) that live as long as it does. A full collection walks all of
    them: at 10,000 connections that was ~0.8 s per gateway process, every session
    stalled. Once `min_new` connections have opened since the last freeze and none for
    `quiet_s`, everything alive is frozen (no collection first: a freeze is meant to be
    cheap). Frozen objects are still freed by reference counting; only reference
    cycles among them wait, and a closed session is such a cycle. So once more sessions
    have closed since the freeze than max(min_new, a quarter of those frozen), the
    freeze is undone and the next full collection frees them: the memory held back is
    bounded by that many closed sessions."""

    __slots__ = ("closed", "frozen", "last_open", "min_new", "opened", "quiet_s", "watch")

    def __init__(self, watch: GcWatch, min_new: int = 200, quiet_s: float = 2.0) -> None:
        self.watch = watch
        self.min_new = min_new
        self.quiet_s = quiet_s
        self.opened = 0  # sessions opened since the last freeze
        self.closed = 0  # sessions closed since the last freeze
        self.frozen = 0  # sessions alive at the last freeze (0: not frozen)
        self.last_open = 0.0

    def session_opened(self, now: float) -> None:
        self.opened += 1
        self.last_open = now

    def session_closed(self) -> None:
        self.closed += 1

    def tick(self, now: float, alive: int) -> None:
        if self.frozen and self.closed > max(self.min_new, self.frozen // 4):
            gc.unfreeze()
            self.watch.unfreezes += 1
            self.frozen = self.closed = 0
            self.opened = alive  # they may be frozen again after the next quiet spell
        if self.opened >= self.min_new and now - self.last_open >= self.quiet_s:
            gc.freeze()
            self.watch.freezes += 1
            self.frozen, self.opened, self.closed = alive, 0, 0

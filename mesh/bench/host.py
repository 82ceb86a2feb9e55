"""The host's speed when a benchmark runs.

These machines share their host, and the same code measured ~1.5x apart within one
evening (docs/store.md, "how much the machine varies"). So every benchmark's final JSON
line carries `host_probe_ms`: the time of a fixed pure-Python loop, best of three, taken
just before the run. Lower is a faster machine; two figures compare only alongside it.
"""

from __future__ import annotations

import asyncio
import time

ITERATIONS = 2_000_000


def _loop_ms() -> float:
    t = time.perf_counter()
    n = 0
    for i in range(ITERATIONS):
        n += i & 7
    return (time.perf_counter() - t) * 1000


async def probe_ms() -> float:
    """~0.3 s; in a worker thread so the event loop stays free (nothing else runs yet)."""
    return round(min([await asyncio.to_thread(_loop_ms) for _ in range(3)]), 1)

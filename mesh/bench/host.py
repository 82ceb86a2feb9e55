"""The host's speed when a benchmark runs.

These machines share their host, and the same code measured ~1.5x apart within one
evening (docs/store.md, "how much the machine varies"). So every benchmark's final JSON
line carries `host_probe_ms`: the time of a fixed pure-Python loop, best of three, taken
just before the run. Lower is a faster machine; two figures compare only alongside it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

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


def cpu_s(pid: int) -> float:
    """CPU time (utime + stime, all threads, children not included) a process has used so
    far, in seconds; 0.0 once it is gone. What a benchmarked process costs whatever else
    runs on the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

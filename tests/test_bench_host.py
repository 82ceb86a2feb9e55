"""The host probe every benchmark line carries (mesh/bench/host.py)."""

from __future__ import annotations

import subprocess
import sys

from mesh.bench import host


async def test_probe_times_the_fixed_loop_in_milliseconds() -> None:
    ms = await host.probe_ms()
    # 2M iterations of a Python loop take tens to hundreds of ms on any machine that runs
    # this suite; 0 or seconds would mean the probe no longer times that loop
    assert 1 < ms < 5000
    assert ms == round(ms, 1)


def test_cpu_s_counts_what_a_process_burns_and_nothing_once_it_is_gone() -> None:
    # A child that spins for a fixed amount of its own CPU time, then waits to be read.
    burn = (
        "import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"done\n"
        # utime + stime in clock ticks: at least the 0.3 s it spun, less one tick.
        assert host.cpu_s(child.pid) >= 0.29
    finally:
        child.communicate(b"")
    assert host.cpu_s(child.pid) == 0.0  # reaped: no /proc entry

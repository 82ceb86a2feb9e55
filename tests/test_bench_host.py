"""The host probe every benchmark line carries (mesh/bench/host.py)."""

from __future__ import annotations

from mesh.bench import host


async def test_probe_times_the_fixed_loop_in_milliseconds() -> None:
    ms = await host.probe_ms()
    # 2M iterations of a Python loop take tens to hundreds of ms on any machine that runs
    # this suite; 0 or seconds would mean the probe no longer times that loop
    assert 1 < ms < 5000
    assert ms == round(ms, 1)

"""The collector helpers: pause accounting and the freeze after a connection burst."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.gcwatch import BurstFreezer, GcWatch


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_watch_counts_a_full_collection() -> None:
    w = GcWatch().install()
    try:
        gc.collect()
        assert w.count[2] >= 1
        assert w.recent
        assert w.recent[-1][1] == 2
    finally:
        gc.callbacks.remove(w._callback)


def test_freezes_after_a_quiet_burst_and_unfreezes_once_enough_closed(unfrozen: None) -> None:
    f = BurstFreezer(GcWatch(), min_new=10, quiet_s=2.0)
    for _ in range(10):
        f.session_opened(100.0)
    f.tick(101.0, alive=10)  # connections still arriving a second ago: not yet
    assert gc.get_freeze_count() == 0
    f.tick(102.5, alive=10)
    assert gc.get_freeze_count() > 0
    assert f.watch.freezes == 1
    for _ in range(10):
        f.session_closed()
    f.tick(103.5, alive=0)  # closed == max(min_new, frozen // 4): still frozen
    assert gc.get_freeze_count() > 0
    f.session_closed()
    f.tick(104.5, alive=0)
    assert gc.get_freeze_count() == 0
    assert f.watch.unfreezes == 1

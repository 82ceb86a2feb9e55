"""mesh.gcpolicy: what a long-running process settles its collector to."""

from __future__ import annotations

import gc

from mesh import gcpolicy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_freezes_what_exists_and_keeps_the_thresholds(gc_restored: None) -> None:
    threshold = gc.get_threshold()
    kept = [_Cycle() for _ in range(100)]
    gcpolicy.settle()
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() >= len(kept)
    # Frozen: in no generation a collection walks.
    assert id(kept[0]) not in {id(o) for o in gc.get_objects()}


def test_settle_collects_garbage_cycles_before_freezing_them(gc_restored: None) -> None:
    gc.disable()
    try:
        _Cycle()  # unreachable at once, but only a collection frees a cycle
        before = sum(isinstance(o, _Cycle) for o in gc.get_objects())
        gcpolicy.settle()
        assert before >= 1
        assert not any(isinstance(o, _Cycle) for o in gc.get_objects())
    finally:
        gc.enable()

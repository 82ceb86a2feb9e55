"""Time-ordered event ids (UUIDv7, RFC 9562).

Within one process ids are strictly increasing even inside one millisecond: the 12-bit
`rand_a` field holds a counter (RFC 9562 method 1), so sorting ids sorts events by the
time they were created. This runs once per event on the publish path, so it avoids
`uuid.UUID` objects and a system call per id: the random bits come from a generator
seeded from the OS (re-seeded in forked children so two processes never share a stream).
"""

from __future__ import annotations

import os
import random
import threading
import time

_lock = threading.Lock()
_rng = random.Random(os.urandom(16))
_last_ms = 0
_counter = 0


def _reseed() -> None:
    _rng.seed(os.urandom(16))


os.register_at_fork(after_in_child=_reseed)


_ms_text = ""  # the formatted 48-bit time part, reused within a millisecond
_text_ms = -1  # the millisecond _ms_text was formatted for


def uuid7() -> str:
    global _last_ms, _counter, _ms_text, _text_ms
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = _rng.getrandbits(10)  # random start, room to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        if _text_ms != _last_ms:
            t = f"{_last_ms:012x}"
            _ms_text = f"{t[:8]}-{t[8:]}"
            _text_ms = _last_ms
        counter = _counter
        rand_b = _rng.getrandbits(62) | (0b10 << 62)
    return f"{_ms_text}-7{counter:03x}-{rand_b >> 48:04x}-{rand_b & 0xFFFFFFFFFFFF:012x}"


def uuid7_time_ns(event_id: str) -> int:
    """The creation time carried by a UUIDv7, in nanoseconds (millisecond precision)."""
    return int(event_id.replace("-", "")[:12], 16) * 1_000_000

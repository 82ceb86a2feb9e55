"""Time-ordered event ids (UUIDv7, RFC 9562).

Within one process ids are strictly increasing even inside one millisecond: the 12-bit
`rand_a` field holds a counter (RFC 9562 method 1), so sorting ids sorts events by the
time they were created.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2)) & 0x3FF  # leave room to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def uuid7_time_ns(event_id: str) -> int:
    """The creation time carried by a UUIDv7, in nanoseconds (millisecond precision)."""
    return (uuid.UUID(event_id).int >> 80) * 1_000_000

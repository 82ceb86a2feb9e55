"""The benchmark's Kafka-side reader, a process of its own (`python -m
bridge_kafka.bench_reader BOOTSTRAP TOPIC`).

It used to be a thread of the bench process, decoding every record while the same
interpreter generated the load and read the NATS side: the measuring process fought
itself for the GIL, and its own delays were counted as the bridge's. Here it has its own
interpreter and reads only the creation timestamp of each event.

Protocol on stdin/stdout, one line each: the child prints "ready" once its partitions
are assigned; the parent writes the first creation time (ns) to measure from, later
"stop"; the child then prints creation -> receipt here (HdrHistogram's base64 encoding,
microseconds) and exits. Only `mesh bench bridge --end-to-end` runs it: the added
latency is read from the brokers after the window, with no reader on the path.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

import msgspec
from confluent_kafka import Consumer
from hdrh.histogram import HdrHistogram


class _Stamp(msgspec.Struct):
    timestamp: int = 0


_stamp = msgspec.json.Decoder(_Stamp).decode


def latency_histogram() -> HdrHistogram:
    """The bench's latency histograms: microseconds, 1 us to 60 s, 3 significant digits."""
    return HdrHistogram(1, 60_000_000, 3)


def record_ns(h: HdrHistogram, ns: int) -> None:
    """One latency given in ns, recorded in us (at least 1: the histogram's floor)."""
    h.record_value(max(1, ns // 1000))


def created_ns(value: bytes | None) -> int:
    """The creation time of an encoded event, decoding nothing else (0 if absent)."""
    return _stamp(value or b"{}").timestamp


def main(bootstrap: str, topic: str) -> None:
    hist = latency_histogram()
    since = [2**62]
    stop = threading.Event()
    assigned = threading.Event()

    def control() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "stop":
                break
            if word:
                since[0] = int(word)
        stop.set()

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lat-{uuid.uuid4().hex}",
            "auto.offset.reset": "latest",
            # A long poll: the broker answers as soon as a record is there.
            "fetch.wait.max.ms": 500,
        }
    )
    c.subscribe([topic], on_assign=lambda _c, _p: assigned.set())
    threading.Thread(target=control, daemon=True).start()
    told = False
    while not stop.is_set():
        # poll() returns as soon as one record is there (consume() would wait for its
        # whole count or the timeout); the rest already fetched comes without waiting.
        first = c.poll(0.1)
        now = time.time_ns()
        msgs = [first, *c.consume(1000, 0)] if first is not None else []
        if not told and assigned.is_set():
            print("ready", flush=True)
            told = True
        for m in msgs:
            if m.error() is None:
                ts = created_ns(m.value())
                if ts >= since[0]:
                    record_ns(hist, now - ts)
    c.close()
    print(hist.encode().decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

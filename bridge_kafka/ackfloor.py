"""Which deliveries of one JetStream consumer are done, and the one ack that says so.

The bridge's NATS -> Kafka consumers ack with JetStream's `AckAll` policy: an ack of
stream sequence X acks every pending delivery at or below X, so one ack per batch does
the work of one per event (measured: the NATS server's CPU per bridged event halves,
docs/bridge.md). The price is that an ack must never cover a delivery that is not done.
This class is what makes that true:

* Known deliveries are kept in stream order, each done (Kafka confirmed it, or it was
  skipped or dead-lettered) or not. The ack goes to the last one of the done prefix.
* A delivery of a message already known (JetStream redelivers after `ack_wait` what it
  has not seen acked) is not new work: the newest delivery replaces the old one, and the
  caller is told the message is in flight or done.
* The server ignores an AckAll whose delivery sequence is not above the last one it
  took; a message whose newest delivery is that old waits for its next redelivery.
* Deliveries the bridge never saw are the danger: a previous process's unacked ones
  (redelivered after `ack_wait`) and ones lost with a dropped connection (a gap in the
  delivery sequence, or a reconnect). The floor then holds every ack until all of them
  have been redelivered: `ack_wait` after the cause, plus a margin.
"""

from __future__ import annotations

import bisect
import collections
import enum
import time
from collections.abc import Callable

from bridge_kafka.feed import Passed


class Seen(enum.Enum):
    NEW = "new"  # work to do
    IN_FLIGHT = "in flight"  # a redelivery of work not done yet
    DONE = "done"  # a redelivery of work done but not acked yet


class _Entry:
    __slots__ = ("delivery", "done")

    def __init__(self, delivery: Passed, done: bool) -> None:
        self.delivery = delivery
        self.done = done


def hold_seconds(ack_wait: float) -> float:
    """How long after an unseen delivery became possible every such delivery has been
    redelivered: the server redelivers `ack_wait` after delivering; the margin covers
    its redelivery timer and a busy loop."""
    return ack_wait * 1.5 + 1.0


class AckFloor:
    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._hold_s = hold_s
        self._clock = clock
        self._order: collections.deque[int] = collections.deque()  # stream seqs, ascending
        self._entries: dict[int, _Entry] = {}
        self._acked_seq = 0  # the stream sequence of the last ack sent
        self._acked_dseq = 0  # ...and its delivery sequence
        self._last_dseq = 0  # the highest delivery sequence seen
        self._hold_until = 0.0
        self.holds = 0

    def hold(self) -> None:
        """Acks wait: deliveries may exist that this floor never saw."""
        self._hold_until = max(self._hold_until, self._clock() + self._hold_s)
        self.holds += 1

    def seen(self, d: Passed) -> Seen:
        """A delivery arrived: remember it (the newest delivery of a message wins)."""
        if self._last_dseq and d.dseq > self._last_dseq + 1:
            self.hold()  # deliveries in between never arrived (a dropped connection)
        self._last_dseq = max(self._last_dseq, d.dseq)
        entry = self._entries.get(d.seq)
        if entry is not None:
            entry.delivery = d
            return Seen.DONE if entry.done else Seen.IN_FLIGHT
        if d.seq <= self._acked_seq:
            # Acked already, yet redelivered: that ack was lost with a connection. It was
            # done before it was acked; ack it again.
            self._insert(d, done=True)
            return Seen.DONE
        self._insert(d, done=False)
        return Seen.NEW

    def _insert(self, d: Passed, done: bool) -> None:
        self._entries[d.seq] = _Entry(d, done)
        if not self._order or d.seq > self._order[-1]:
            self._order.append(d.seq)
        else:  # a redelivery of something never seen: rare, only after a hold
            bisect.insort(self._order, d.seq)

    def done(self, seq: int) -> None:
        entry = self._entries.get(seq)
        if entry is not None:
            entry.done = True

    def ack_target(self) -> Passed | None:
        """The delivery to ack (AckAll) now, if any; forgets everything it covers."""
        if self._clock() < self._hold_until:
            return None
        target = -1
        order, entries = self._order, self._entries
        for i, seq in enumerate(order):
            entry = entries[seq]
            if not entry.done:
                break
            if entry.delivery.dseq > self._acked_dseq:
                target = i
        if target < 0:
            return None
        for _ in range(target):
            del entries[order.popleft()]
        last = entries.pop(order.popleft()).delivery
        self._acked_seq, self._acked_dseq = last.seq, last.dseq
        return last

    def in_flight(self) -> int:
        return sum(1 for e in self._entries.values() if not e.done)

    def __len__(self) -> int:
        return len(self._entries)

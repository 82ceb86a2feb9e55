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
  delivery sequence, or a reconnect). The floor then holds every ack until the server
  itself says every message it has pending is known here: its `num_ack_pending` at one
  moment after the cause, against the messages known here that were delivered by then
  (`checked`). No clock: a redelivery that comes late (a loaded machine) keeps the hold.
"""

from __future__ import annotations

import bisect
import collections
import enum

from bridge_kafka.feed import Passed


class Seen(enum.Enum):
    NEW = "new"  # work to do
    IN_FLIGHT = "in flight"  # a redelivery of work not done yet
    DONE = "done"  # a redelivery of work done but not acked yet


# The hot path returns these without an attribute lookup on the enum class.
NEW, IN_FLIGHT, DONE = Seen.NEW, Seen.IN_FLIGHT, Seen.DONE


class AckFloor:
    """The known, not yet acked deliveries of one consumer. Kept lean: every bridged
    event passes `seen` and `done` once, and the ack walk once."""

    def __init__(self) -> None:
        self._order: collections.deque[int] = collections.deque()  # stream seqs, ascending
        self._newest: dict[int, Passed] = {}  # stream seq -> its newest delivery
        self._done: set[int] = set()
        self._acked_seq = 0  # the stream sequence of the last ack sent
        self._acked_dseq = 0  # ...and its delivery sequence
        self._last_dseq = 0  # the highest delivery sequence seen
        self.held = False  # deliveries may exist that this floor never saw: no acks
        self.cause = 0  # counts the reasons to hold, so a check answers the newest
        self.holds = 0

    def hold(self) -> None:
        """Acks wait: deliveries may exist that this floor never saw. Only `checked`
        lifts it, on the server's word."""
        self.held = True
        self.cause += 1
        self.holds += 1

    def reconnected(self) -> None:
        """The connection was lost and is back: deliveries may have been lost with it,
        and the server may be a restarted one whose delivery sequences restart from its
        last saved state (lower than the ones seen here). Hold, and take its word anew."""
        self.hold()
        self._last_dseq = 0
        self._acked_dseq = 0

    def checked(
        self, cause: int, pending: int, delivered_dseq: int, delivered_seq: int
    ) -> bool | None:
        """The consumer's state on the server at one moment after hold `cause`: `pending`
        messages delivered and not acked, the last delivery `delivered_dseq`, of stream
        sequence `delivered_seq`. No ack has been sent since the hold, so every message
        pending then is still pending or known here; once every delivery up to that
        moment has arrived, the known ones at or below `delivered_seq` are exactly the
        pending ones this floor saw. True: as many as the server counts, so none is
        unseen and the hold ends. False: some are unseen yet (their redelivery comes
        after `ack_wait`), or a newer cause came: ask again later. None: deliveries up
        to that moment are still arriving; call again."""
        if cause != self.cause or not self.held:
            return not self.held
        if pending > 0:
            if self._last_dseq < delivered_dseq:
                return None
            known = sum(1 for seq in self._order if seq <= delivered_seq)
            if known < pending:
                return False
        self.held = False
        return True

    def seen(self, d: Passed) -> Seen:
        """A delivery arrived: remember it (the newest delivery of a message wins)."""
        dseq, last = d.dseq, self._last_dseq
        if dseq > last:
            if last and dseq != last + 1:
                self.hold()  # deliveries in between never arrived (a dropped connection)
            self._last_dseq = dseq
        seq = d.seq
        newest = self._newest
        if seq in newest:
            newest[seq] = d
            return DONE if seq in self._done else IN_FLIGHT
        newest[seq] = d
        order = self._order
        if not order or seq > order[-1]:
            order.append(seq)
        else:  # a redelivery of something never seen: rare, only after a hold
            bisect.insort(order, seq)
        if seq <= self._acked_seq:
            # Acked already, yet redelivered: that ack was lost with a connection. It was
            # done before it was acked; ack it again.
            self._done.add(seq)
            return DONE
        return NEW

    def done(self, seq: int) -> None:
        if seq in self._newest:
            self._done.add(seq)

    def ack_target(self) -> Passed | None:
        """The delivery to ack (AckAll) now, if any; forgets everything it covers."""
        if not self._done or self.held:
            return None
        order, newest, done = self._order, self._newest, self._done
        acked_dseq = self._acked_dseq
        target = -1
        for i, seq in enumerate(order):
            if seq not in done:
                break
            if newest[seq].dseq > acked_dseq:
                target = i
        if target < 0:
            return None
        for _ in range(target + 1):
            seq = order.popleft()
            last = newest.pop(seq)
            done.discard(seq)
        self._acked_seq, self._acked_dseq = last.seq, last.dseq
        return last

    def in_flight(self) -> int:
        return len(self._newest) - len(self._done)

    def __len__(self) -> int:
        return len(self._newest)

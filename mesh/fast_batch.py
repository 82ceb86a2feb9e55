"""JetStream "fast batch" publishing: many events into one stream, one confirmation.

nats-server 2.14+ stores each message of a fast batch as it arrives (streams with
`allow_batched`, which `mesh provision` sets) and answers the batch once, instead of one
PubAck per event. The whole protocol rides on each message's reply subject,
`<inbox>.<batch id>.<flow>.<gap mode>.<batch seq>.<op>.$FI` (op 0 start, 1 append,
2 commit), as nats-server's `server/stream.go` (`getFastBatch`) reads it.

What the server answers, and what `publish` makes of it:

* the PubAck of the commit, `{"stream", "seq", "batch", "count": c}`: batch messages
  1..c are stored (a duplicate `Nats-Msg-Id` counts as stored: the stream had it);
* `{"type": "err", "seq": s, "error": ...}` then a PubAck with `count` s - 1: message s
  was refused; the batch ended there (gap mode "fail"), the rest was not stored;
* a gap (messages lost on a dropped connection) also ends the batch, with the PubAck
  naming how far it got;
* `{"type": "ack", ...}` flow messages on the way: not needed here (the batches are
  small enough to send whole), so skipped.

`publish(items)` returns only when every item is confirmed. A shortfall sends the rest
again as a new batch, and so does a batch the server lost (restarted in the middle of
it); no answer within `ack_timeout` sends all of it again (the same
Nats-Msg-Ids: what was stored already is a duplicate, not stored twice). A refusal
raises StreamRejected (BatchPublishDisabled when the stream lacks `allow_batched`);
`deadline` without a confirmation raises PublishTimeout. Unlike `Publisher`, no
per-event stream sequence comes back: this is for callers that only need "stored", such
as the Kafka bridge.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client

from mesh import wire
from mesh.errors import PublishError, PublishTimeout, StreamRejected
from mesh.publisher import ApiError, Item

# nats-server's error code for a stream without `allow_batched`.
BATCH_DISABLED = 10205
# Errors about the batch, not its messages: the server lost it (a restart, its cleanup
# timer) or has too many open. The batch is sent again, as a new one.
_RETRY_AFTER = {10208: 0.0, 10211: 0.05}  # unknown batch id, too many in flight
# Flow messages the server may send per this many stored messages (it caps it at 500).
_FLOW = 500


class BatchPublishDisabled(StreamRejected):
    """The stream does not allow fast batches; `mesh provision` turns them on."""


class _Reply(msgspec.Struct):
    """Any answer to a batch: a flow message (`type` set) or the final PubAck."""

    type: str = ""
    seq: int = 0
    count: int = -1
    error: ApiError | None = None


_decode = msgspec.json.Decoder(_Reply).decode


class _Pending:
    __slots__ = ("count", "error", "error_seq", "future")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.count = 0  # confirmed (stored) messages, from the final PubAck
        self.error: ApiError | None = None
        self.error_seq = 1  # the batch message the error is about


def _op(seq: int, last: int) -> int:
    return 0 if seq == 1 and last > 1 else 2 if seq == last else 1


class FastBatchPublisher:
    def __init__(self, nc: Client, *, ack_timeout: float = 2.0, deadline: float = 30.0) -> None:
        self._nc = nc
        self.ack_timeout = ack_timeout
        self.deadline = deadline
        self._pending: dict[bytes, _Pending] = {}
        # Batch ids: unique per publisher (a random part) and per batch (a counter).
        run = os.urandom(5).hex()
        self._ids = (f"{run}{n}" for n in itertools.count(1))
        self._prefix = ""
        self._skip = 0
        self._route: wire.Route | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._skip = len(self._prefix) + 1
        self._route = await wire.route(self._nc, f"{self._prefix}.>")
        self._route.set_handler(self._on_reply)

    async def close(self) -> None:
        if self._route is not None:
            await self._route.close()
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(PublishError("publisher closed before the batch ack"))
        self._pending.clear()

    async def publish(self, items: Sequence[Item]) -> None:
        """Stores `items` (subject, header block, payload), all of one stream, in order."""
        started = time.monotonic()
        todo = items
        while todo:
            confirmed = await self._one_batch(todo, started)
            todo = todo[confirmed:]
            if todo and time.monotonic() - started > self.deadline:
                raise PublishTimeout(todo[0][0], self.deadline)

    async def _one_batch(self, items: Sequence[Item], started: float) -> int:
        """Sends one batch; returns how many leading items the server confirmed."""
        batch_id = next(self._ids)
        p = _Pending(asyncio.get_running_loop().create_future())
        self._pending[batch_id.encode()] = p
        base = f"{self._prefix}.{batch_id}.{_FLOW}.fail."
        last = len(items)
        frames = [
            wire.hpub(subject, f"{base}{seq}.{_op(seq, last)}.$FI", headers, payload)
            for seq, (subject, headers, payload) in enumerate(items, 1)
        ]
        await wire.write(self._nc, b"".join(frames))
        await wire.flush(self._nc)
        try:
            while not p.future.done():
                try:
                    await asyncio.wait_for(asyncio.shield(p.future), self.ack_timeout)
                except TimeoutError:
                    if self._nc.is_connected or time.monotonic() - started > self.deadline:
                        return 0  # no answer: all of it again, as a new batch
                    # Disconnected: the frames wait in nats-py's buffer and go out on the
                    # reconnect; sending them again now would only pile up copies there.
        finally:
            self._pending.pop(batch_id.encode(), None)
        if p.error is not None and p.count < last:
            e = p.error
            if e.err_code in _RETRY_AFTER:
                await asyncio.sleep(_RETRY_AFTER[e.err_code])
                return p.count
            kind = BatchPublishDisabled if e.err_code == BATCH_DISABLED else StreamRejected
            raise kind(items[min(p.error_seq, last) - 1][0], e.err_code, e.description)
        return p.count

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        batch_id = subject[self._skip :].split(b".", 1)[0]
        p = self._pending.get(batch_id)
        if p is None or p.future.done() or not data:
            return
        try:
            r = _decode(data)
        except msgspec.DecodeError as e:
            p.future.set_exception(PublishError(f"unreadable batch reply {data[:200]!r}: {e}"))
            return
        if r.type == "err" and r.error is not None:
            if p.error is None:
                p.error, p.error_seq = r.error, r.seq
        elif r.type:
            return  # flow ack or gap notice: the PubAck that ends the batch follows
        elif r.error is not None:  # the batch ended before storing anything
            p.error = r.error
            p.future.set_result(None)
        else:
            p.count = max(r.count, 0)
            p.future.set_result(None)

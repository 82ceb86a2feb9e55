"""Pipelined JetStream publishing with every PubAck checked.

Each event is sent with its own reply subject on one wildcard ack inbox
(`<inbox>.<token>`), so thousands of acks can be in flight on one connection. An event is
done only when its PubAck names a stream sequence. Until then it stays in `_inflight`:

* no ack within `ack_timeout` -> the same frame (same Nats-Msg-Id) is sent again; the
  stream's duplicate window turns a second copy into `duplicate: true` with the original
  sequence, so a retry never stores an event twice;
* the connection comes back after a drop -> everything in flight is sent again at once;
* `deadline` passes -> the caller gets PublishTimeout (the event may or may not be stored;
  publishing it again is safe).

Per event this costs one frame write and one small ack decode: acks are taken straight
from the protocol parser (wire.route) and a whole `publish_many` call shares one
future. (JetStream atomic batches, one ack per batch, were measured and rejected: see
docs/decisions.md.)
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client

from mesh import wire
from mesh.errors import PublishError, PublishNotPermitted, PublishTimeout, StreamRejected


class ApiError(msgspec.Struct):
    """The `error` object of a JetStream answer."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode
_PERMISSION = re.compile(r'[Pp]ermissions [Vv]iolation for [Pp]ublish to "?([^"\s]+)"?')
_NO_RESPONDERS = b"NATS/1.0 503"


class _Batch:
    """The events of one publish_many call: one future, settled when all are settled."""

    __slots__ = ("acks", "error", "future", "remaining")

    def __init__(self, n: int, future: asyncio.Future[list[PubAck]]) -> None:
        self.acks: list[PubAck | None] = [None] * n
        self.remaining = n
        self.error: Exception | None = None
        self.future = future

    def settle(self, index: int, result: PubAck | Exception) -> None:
        if isinstance(result, Exception):
            self.error = self.error or result
        else:
            self.acks[index] = result
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.acks)  # type: ignore[arg-type]  # all set


Item = tuple[str, bytes, bytes]  # subject, header block, payload


class _Inflight:
    """One event's frame awaiting its PubAck; `index` is its place in the caller's batch."""

    __slots__ = (
        "attempts",
        "batch",
        "frame",
        "index",
        "last_error",
        "sent_at",
        "started",
        "subject",
    )

    def __init__(self, subject: str, frame: bytes, batch: _Batch, index: int, now: float) -> None:
        self.subject = subject
        self.frame = frame
        self.batch = batch
        self.index = index
        self.sent_at = now
        self.started = now
        self.attempts = 1
        # Why the last attempt failed, if the server said so (reported at the deadline).
        self.last_error: Exception | None = None


@dataclass
class PublisherStats:
    published: int = 0
    resent: int = 0
    duplicates: int = 0
    failed: int = 0


class Publisher:
    def __init__(
        self,
        nc: Client,
        *,
        user: str,
        ack_timeout: float = 2.0,
        deadline: float = 30.0,
        window: int = 8192,
    ) -> None:
        self._nc = nc
        self._user = user
        self.ack_timeout = ack_timeout
        self.deadline = deadline
        self.window = window
        self._inflight: dict[bytes, _Inflight] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._room = asyncio.Event()
        self._retry_task: asyncio.Task[None] | None = None
        self.stats = PublisherStats()

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._skip = len(self._prefix) + 1
        self._route = await wire.route(self._nc, f"{self._prefix}.*")
        self._route.set_handler(self._on_ack)
        self._retry_task = asyncio.create_task(self._retry_loop(), name="mesh-publish-retry")

    async def close(self) -> None:
        if self._retry_task:
            self._retry_task.cancel()
        for token in list(self._inflight):
            self._settle(token, PublishError("publisher closed before the ack arrived"))

    # -- sending -----------------------------------------------------------------------

    async def publish_many(self, items: Sequence[tuple[str, bytes, bytes]]) -> list[PubAck]:
        """Send (subject, header block, payload) items, keeping up to `window` acks in
        flight; one flush per burst. Returns the acks in the order of `items`."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        batch = _Batch(len(items), loop.create_future())
        nc, inflight, prefix = self._nc, self._inflight, self._prefix
        now = time.monotonic()
        frames: list[bytes] = []
        for index, (subject, headers, payload) in enumerate(items):
            if len(inflight) >= self.window:
                await wire.write(nc, b"".join(frames))
                frames.clear()
                await wire.flush(nc)
                while len(inflight) >= self.window:
                    self._room.clear()
                    await self._room.wait()
                now = time.monotonic()
            token = b"%d" % next(self._tokens)
            frame = wire.hpub(subject, f"{prefix}.{token.decode()}", headers, payload)
            inflight[token] = _Inflight(subject, frame, batch, index, now)
            frames.append(frame)
        # One write for the whole burst: the frames are contiguous in nats-py's buffer.
        await wire.write(nc, b"".join(frames))
        await wire.flush(nc)
        return await batch.future

    # -- acks --------------------------------------------------------------------------

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        token = subject[self._skip :]
        p = self._inflight.get(token)
        if p is None:  # a late ack for a retried, already settled event
            return
        if not data:
            if headers is not None and headers.startswith(_NO_RESPONDERS):
                # No responders: no stream for the subject, or (in a cluster) the stream has
                # no leader for a moment. Retried like a lost ack until the deadline.
                p.last_error = StreamRejected(
                    p.subject,
                    503,
                    "no stream answered (stream missing: run `mesh provision`; or no leader)",
                )
            return
        try:
            ack = _decode_ack(data)
        except msgspec.DecodeError as e:
            self._settle(token, PublishError(f"unreadable PubAck for {p.subject!r}: {e}"))
            return
        if ack.error is not None:
            err = ack.error
            self._settle(token, StreamRejected(p.subject, err.err_code, err.description))
            return
        self.stats.published += 1
        if ack.duplicate:
            self.stats.duplicates += 1
        self._settle(token, ack)

    def _settle(self, token: bytes, result: PubAck | Exception) -> None:
        p = self._inflight.pop(token, None)
        if p is None:
            return
        if isinstance(result, Exception):
            self.stats.failed += 1
        p.batch.settle(p.index, result)
        if len(self._inflight) < self.window:
            self._room.set()

    def on_server_error(self, err: Exception) -> bool:
        """Fail the publishes a permissions violation names. True if it was one."""
        m = _PERMISSION.search(str(err))
        if not m:
            return False
        # The server names the subject after the account's partition mapping (one more
        # token), and nats-py lower-cases the whole error text.
        reported = m.group(1).lower()
        for token, p in list(self._inflight.items()):
            ours = p.subject.lower()
            if reported == ours or reported.startswith(ours + "."):
                self._settle(token, PublishNotPermitted(p.subject, self._user, str(err)))
        return True

    # -- retries -----------------------------------------------------------------------

    async def resend_all(self) -> None:
        """After a reconnect: whatever was in flight may never have reached the stream."""
        now = time.monotonic()
        for p in list(self._inflight.values()):
            p.sent_at = now
            p.attempts += 1
            self.stats.resent += 1
            await wire.write(self._nc, p.frame)
        await wire.flush(self._nc)

    async def _retry_loop(self) -> None:
        tick = max(self.ack_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            resent = False
            for token, p in list(self._inflight.items()):
                if now - p.started > self.deadline:
                    self._settle(token, p.last_error or PublishTimeout(p.subject, self.deadline))
                elif now - p.sent_at > self.ack_timeout and self._nc.is_connected:
                    p.sent_at = now
                    p.attempts += 1
                    self.stats.resent += 1
                    await wire.write(self._nc, p.frame)
                    resent = True
            if resent:
                await wire.flush(self._nc)

    @property
    def inflight(self) -> int:
        """Events sent and not yet acknowledged."""
        return len(self._inflight)

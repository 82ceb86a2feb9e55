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
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh import wire
from mesh.errors import PublishError, PublishNotPermitted, PublishTimeout, StreamRejected


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode
_PERMISSION = re.compile(r'[Pp]ermissions [Vv]iolation for [Pp]ublish to "?([^"\s]+)"?')


@dataclass(slots=True)
class _Inflight:
    subject: str
    frame: bytes
    future: asyncio.Future[PubAck]
    sent_at: float
    started: float
    attempts: int = 1
    # Why the last attempt failed, if the server said so (reported at the deadline).
    last_error: Exception | None = None


@dataclass
class PublisherStats:
    published: int = 0
    resent: int = 0
    duplicates: int = 0
    failed: int = 0
    by_stream: dict[str, int] = field(default_factory=dict)


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
        self._inflight: dict[str, _Inflight] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._slots = asyncio.Semaphore(window)
        self._retry_task: asyncio.Task[None] | None = None
        self.stats = PublisherStats()

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        await self._nc.subscribe(
            f"{self._prefix}.*", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._retry_task = asyncio.create_task(self._retry_loop(), name="mesh-publish-retry")

    async def close(self) -> None:
        if self._retry_task:
            self._retry_task.cancel()
        for p in self._inflight.values():
            if not p.future.done():
                p.future.set_exception(PublishError("publisher closed before the ack arrived"))
        self._inflight.clear()

    # -- sending -----------------------------------------------------------------------

    async def publish(self, subject: str, headers: bytes, payload: bytes) -> PubAck:
        (ack,) = await self.publish_many([(subject, headers, payload)])
        return ack

    async def publish_many(self, items: Sequence[tuple[str, bytes, bytes]]) -> list[PubAck]:
        """Send all, keeping up to `window` acks in flight; one flush per burst."""
        futures: list[asyncio.Future[PubAck]] = []
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        unflushed = 0
        for subject, headers, payload in items:
            if self._slots.locked():
                await wire.flush(self._nc)
                unflushed = 0
            await self._slots.acquire()
            token = str(next(self._tokens))
            fut: asyncio.Future[PubAck] = loop.create_future()
            fut.add_done_callback(self._release)
            frame = wire.hpub(subject, f"{self._prefix}.{token}", headers, payload)
            self._inflight[token] = _Inflight(subject, frame, fut, now, now)
            await wire.write(self._nc, frame)
            futures.append(fut)
            unflushed += 1
        if unflushed:
            await wire.flush(self._nc)
        return list(await asyncio.gather(*futures))

    def _release(self, _: asyncio.Future[PubAck]) -> None:
        self._slots.release()

    # -- acks --------------------------------------------------------------------------

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) + 1 :]
        p = self._inflight.get(token)
        if p is None:  # a late ack for a retried, already settled event
            return
        if not msg.data:
            status = (msg.headers or {}).get("Status", "")
            if status == "503":
                # No responders: no stream for the subject, or (in a cluster) the stream has
                # no leader for a moment. Retried like a lost ack until the deadline.
                p.last_error = StreamRejected(
                    p.subject,
                    503,
                    "no stream answered (stream missing: run `mesh provision`; or no leader)",
                )
            return  # other empty replies (e.g. flow control) are not acks
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError as e:
            self._settle(token, PublishError(f"unreadable PubAck for {p.subject!r}: {e}"))
            return
        if ack.error is not None:
            self._settle(
                token, StreamRejected(p.subject, ack.error.err_code, ack.error.description)
            )
            return
        self.stats.published += 1
        if ack.duplicate:
            self.stats.duplicates += 1
        self._settle(token, ack)

    def _settle(self, token: str, result: PubAck | Exception) -> None:
        p = self._inflight.pop(token, None)
        if p is None or p.future.done():
            return
        if isinstance(result, Exception):
            self.stats.failed += 1
            p.future.set_exception(result)
        else:
            p.future.set_result(result)

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
        return len(self._inflight)

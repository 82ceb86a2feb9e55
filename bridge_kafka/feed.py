"""The NATS -> Kafka direction's JetStream feed: stored events passed through as bytes.

A mesh `Subscription` decodes every delivery into an `Event` and sorts it into priority
lanes one at a time; the bridge needs neither the whole event (the Kafka record value is
the stored bytes) nor one-at-a-time hand-out. In the profile of this direction at ~40k
events/s, that decode, the lanes and the per-delivery objects were ~20 % of the bridge's
one busy thread. This subclass keeps everything else of the subscription (the durable
consumers, one per priority stream, flow control, heartbeats, closing) and replaces the
message handler (`Subscription.handler`, the core's extension point): it reads only the
fields a record needs (`_Fields`, the rest of the JSON is skipped by the decoder, not
built) and queues raw deliveries per priority.
The whole `Event` is decoded only when one is needed (the dead-letter path).

With `ack="all"` (the bridge's), a stored message that is not an event cannot be TERMed
(a TERM is an ack, and would ack every earlier delivery of its stream): it is handed out
like the others with `malformed` set, for the caller to dead-letter and count as done.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Mapping
from typing import Self

import msgspec
from nats.aio.client import Client
from opentelemetry import trace

from mesh import events as ev
from mesh import tracing, wire
from mesh.catalog import Priority
from mesh.events import Event
from mesh.subscriber import ACK_FRAME, Subscription, ack_seqs, answer_control, term_malformed

log = logging.getLogger("bridge_kafka")


class _Fields(msgspec.Struct):
    """What a Kafka record needs from a stored event (other fields are skipped)."""

    event_id: str
    event_type: str
    correlation_id: str
    symbol: str | None = None
    account: str | None = None


_decode_fields = msgspec.json.Decoder(_Fields).decode
# What a message that is not an event carries instead of its fields.
_NO_FIELDS = _Fields(event_id="", event_type="", correlation_id="")


class Passed:
    """One JetStream delivery, kept as the stored bytes."""

    __slots__ = (
        "_event",
        "_headers",
        "_nc",
        "_reply",
        "_span",
        "_subject",
        "data",
        "dseq",
        "fields",
        "malformed",
        "raw_headers",
        "seq",
        "stream",
    )

    def __init__(
        self,
        nc: Client,
        subject: bytes,
        reply: bytes,
        raw_headers: bytes | None,
        data: bytes,
        fields: _Fields,
        stream: str,
        malformed: str | None = None,
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._reply = reply
        self._span: trace.Span | None = None
        self.raw_headers = raw_headers
        self.data = data
        self.fields = fields
        self.stream = stream
        self.malformed = malformed  # why the stored bytes are not an event
        # stream and consumer delivery sequences (from the ack subject)
        self.seq, self.dseq = ack_seqs(reply) if reply else (0, 0)
        self._event: Event | None = None
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = wire.parse_headers(self.raw_headers)
        return self._headers

    @property
    def event(self) -> Event:
        """The whole event, decoded on first use (validated when it was stored)."""
        if self._event is None:
            self._event = ev.decode(self.data)
        return self._event

    def start_span(self) -> None:
        """With tracing on: the bridge's CONSUMER span, child of the publisher's
        `traceparent`, ended at the ack (as the mesh subscriber does)."""
        f = self.fields
        self._span = tracing.consume_span(
            f.event_type, self._subject.decode(), f.event_id, self.headers
        )

    def ack_frame(self) -> bytes:
        if self._span is not None:
            self._span.end()
            self._span = None
        return ACK_FRAME % self._reply if self._reply else b""

    async def ack(self) -> None:
        if self._reply:
            await wire.send(self._nc, self.ack_frame())

    async def nak(self) -> None:
        if self._reply:
            await wire.send(self._nc, b"PUB %s 4\r\n-NAK\r\n" % self._reply)


class PassThrough(Subscription):
    """A mesh subscription whose deliveries are `Passed` items, taken in batches with
    `take()`: most urgent priority first, with a share for every waiting priority in each
    batch so a busy critical stream never starves the others."""

    _queues: list[collections.deque[Passed]]

    async def start(self) -> Self:
        self._queues = [collections.deque() for _ in Priority]
        self._waiting = 0
        self._ready = asyncio.Event()
        self.malformed = 0
        return await super().start()

    def handler(self, priority: Priority, stream: str) -> wire.RawHandler:
        nc = self._mesh.nc
        queue = self._queues[priority.rank]
        decode = _decode_fields
        ready = self._ready
        pass_malformed = self.opts.ack == "all"

        def on_msg(
            subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> Awaitable[None] | None:
            if not data:
                return answer_control(nc, reply, headers)
            malformed = None
            try:
                fields = decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self.malformed += 1
                if not pass_malformed:
                    return term_malformed(nc, subject, reply, e)
                fields, malformed = _NO_FIELDS, str(e)
            queue.append(Passed(nc, subject, reply, headers, data, fields, stream, malformed))
            self._waiting += 1
            ready.set()
            return None

        return on_msg

    async def take(self, max_items: int) -> list[Passed]:
        """Wait for at least one delivery, then take up to `max_items` of those here."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        out: list[Passed] = []
        share = max(1, max_items // 16)
        for limit in (share, max_items):  # a share for each priority, then by rank
            for q in self._queues:
                n = min(len(q), limit, max_items - len(out))
                out.extend(q.popleft() for _ in range(n))
        self._waiting -= len(out)
        self.stats.delivered += len(out)
        if tracing.enabled():
            for p in out:
                p.start_span()
        return out

    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        # Taken from the server but never handed out: back now, not after ack_wait.
        if self.opts.durable:
            for q in self._queues:
                while q:
                    try:
                        await q.popleft().nak()
                    except Exception as e:  # the connection may already be gone
                        log.debug("nak on close: %r", e)

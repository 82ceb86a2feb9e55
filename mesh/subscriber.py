"""Subscriptions: JetStream push consumers, one per priority stream, feeding priority lanes.

A subscription over several priorities opens one consumer on each matching stream. Their
messages land in `PriorityLanes`, so a critical event that arrives while thousands of
background events wait is the next one handed out. Each consumer keeps at most
`max_ack_pending` events unacknowledged: that bounds memory and is the back-pressure that
leaves the backlog on the server, where a critical event can still overtake it.

Content filters and upcasters run on receipt; an event that does not match is acked at
once (it is not for this subscriber) and never reaches the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import msgspec
from nats.aio.client import Client
from opentelemetry import trace

from mesh import events as ev
from mesh import filters as flt
from mesh import jsapi, subjects, tracing, wire
from mesh.catalog import Catalog, Priority
from mesh.errors import MalformedEvent, MeshError
from mesh.events import Event
from mesh.priority import PriorityLanes
from mesh.resource import AsyncResource
from mesh.transforms import Projection, Transforms

if TYPE_CHECKING:
    from mesh.client import Mesh

log = logging.getLogger("mesh.subscriber")
NS = 1_000_000_000
_FLOW_CONTROL = b"NATS/1.0 100 FlowControl"
_STALLED = b"\r\nNats-Consumer-Stalled:"
# Replies to a delivery as written to the wire, % its reply subject.
ACK_FRAME = b"PUB %s 4\r\n+ACK\r\n"
TERM_FRAME = b"PUB %s 5\r\n+TERM\r\n"


def answer_control(nc: Client, reply: bytes, headers: bytes | None) -> Awaitable[None] | None:
    """For a delivery without data, which is JetStream talking to the consumer: answer a
    flow-control request (or the server stops sending). An idle heartbeat is ignored,
    unless it names a flow-control request the server still waits for
    (`Nats-Consumer-Stalled`): that request was lost, e.g. with a dropped connection, and
    the consumer would stay stalled for good if it were not answered now."""
    if headers is None:
        return None
    request = reply if headers.startswith(_FLOW_CONTROL) else _stalled_on(headers)
    return wire.send(nc, b"PUB %s 0\r\n\r\n" % request) if request else None


def _stalled_on(headers: bytes) -> bytes:
    """The flow-control request an idle heartbeat says the server waits for, or b""."""
    at = headers.find(_STALLED)
    if at < 0:
        return b""
    start = at + len(_STALLED)
    end = headers.find(b"\r\n", start)
    return headers[start : end if end >= 0 else len(headers)].strip()


def term_malformed(
    nc: Client, subject: bytes, reply: bytes, err: Exception
) -> Awaitable[None] | None:
    """A stored message that is not an event: logged and never delivered again (it cannot
    become one)."""
    log.error("dropping malformed message on %s: %s", subject.decode(), err)
    return wire.send(nc, TERM_FRAME % reply) if reply else None


class Interest(msgspec.Struct, frozen=True, kw_only=True):
    """A subject filter by fields; unset fields match anything."""

    priority: Priority | None = None
    domain: str | None = None
    event_type: str | None = None
    symbol: str | None = None
    account: str | None = None

    def pattern(self, partition: int | None = None) -> str:
        return subjects.pattern(
            priority=self.priority,
            domain=self.domain,
            event_type=self.event_type,
            symbol=self.symbol,
            account=self.account,
            partition=partition,
        )


class Start(msgspec.Struct, frozen=True):
    """Where a new consumer begins. Sequences are per stream."""

    policy: Literal["new", "all", "seq", "time", "last_per_subject"] = "new"
    seq: int = 0
    time: datetime | None = None

    @classmethod
    def new(cls) -> Start:
        return cls("new")

    @classmethod
    def all(cls) -> Start:
        return cls("all")

    @classmethod
    def at_seq(cls, seq: int) -> Start:
        return cls("seq", seq=seq)

    @classmethod
    def at_time(cls, when: datetime) -> Start:
        return cls("time", time=when)

    def consumer_fields(self) -> dict[str, Any]:
        if self.policy == "seq":
            return {"deliver_policy": "by_start_sequence", "opt_start_seq": max(self.seq, 1)}
        if self.policy == "time":
            assert self.time is not None
            t = self.time if self.time.tzinfo else self.time.replace(tzinfo=UTC)
            return {"deliver_policy": "by_start_time", "opt_start_time": t.isoformat()}
        return {"deliver_policy": self.policy}


@dataclass
class SubscriptionOptions:
    durable: str | None = None
    start: Start = field(default_factory=Start.new)
    where: flt.Filter | str | None = None
    # "all": acking one delivery acks every earlier one of its stream (one ack per
    # batch instead of one per event: half the server's CPU per event). Only for a
    # subscriber that tracks which deliveries are done (the Kafka bridge's ack floor).
    ack: Literal["explicit", "none", "all"] = "explicit"
    max_ack_pending: int = 1024
    ack_wait: float = 30.0
    burst: int = 64
    partition: int | None = None
    transforms: Transforms | None = None
    project: list[str] | None = None


class Delivery:
    """One event handed to the caller, with what it needs to acknowledge it."""

    __slots__ = (
        "_headers",
        "_nc",
        "_raw_headers",
        "_reply",
        "_span",
        "data",
        "event",
        "priority",
        "seq",
        "stream",
        "subject",
    )

    def __init__(
        self,
        nc: Client,
        subject: str,
        reply: bytes,
        raw_headers: bytes | None,
        event: Event,
        priority: Priority,
        stream: str,
        seq: int,
        data: bytes = b"",
    ) -> None:
        self._nc = nc
        self._reply = reply
        self._raw_headers = raw_headers
        self.data = data  # the payload as stored: forward it without encoding `event` again
        self._headers: dict[str, str] | None = None
        self._span: trace.Span | None = None
        self.event = event
        self.subject = subject
        self.priority = priority
        self.stream = stream
        self.seq = seq

    @property
    def headers(self) -> Mapping[str, str]:
        """NATS headers (Nats-Msg-Id, Tm-Correlation-Id, traceparent, ...), parsed on use."""
        if self._headers is None:
            self._headers = wire.parse_headers(self._raw_headers)
        return self._headers

    @property
    def raw_headers(self) -> bytes | None:
        """The NATS header block as received (search it before paying for a parse)."""
        return self._raw_headers

    @property
    def stored_ns(self) -> int:
        """When JetStream stored the event (the server's clock, ns since epoch): the
        moment it became durable, as opposed to `event.timestamp`, its creation."""
        return stored_ns(self._reply)

    @property
    def num_delivered(self) -> int:
        """1 on first delivery; more when the server redelivers (no ack in time)."""
        return ack_info(self._reply)[1]

    async def _reply_with(self, body: bytes) -> None:
        self._end_span()
        if self._reply:
            await wire.send(self._nc, b"PUB %s %d\r\n%s\r\n" % (self._reply, len(body), body))

    async def ack(self) -> None:
        """Acknowledge (sent with the next flush, batched with other outgoing traffic)."""
        await self._reply_with(b"+ACK")

    def ack_frame(self) -> bytes:
        """The ack as protocol bytes, for `ack_many`; ends the delivery's span."""
        self._end_span()
        return ACK_FRAME % self._reply if self._reply else b""

    async def ack_sync(self, timeout: float = 5.0) -> None:
        """Ack and wait until the server confirmed it: for work that must not repeat."""
        self._end_span()
        if self._reply:
            await self._nc.request(self._reply.decode(), b"+ACK", timeout)

    async def nak(self, delay: float = 0.0) -> None:
        """Ask for redelivery, after `delay` seconds."""
        await self._reply_with(b"-NAK" if delay <= 0 else b'-NAK {"delay": %d}' % int(delay * NS))

    async def term(self) -> None:
        """Never deliver this event again (to this consumer)."""
        await self._reply_with(b"+TERM")

    def _end_span(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None


class Ackable(Protocol):
    """A delivery `ack_many` can ack: a `Delivery`, or a part's own kind of delivery
    (the Kafka bridge's `Passed`)."""

    _nc: Client

    def ack_frame(self) -> bytes: ...


async def ack_many(deliveries: Iterable[Ackable]) -> None:
    """Acknowledge many deliveries of one connection in one write and one flush (acking
    one by one flushes per ack, which at high rates costs more than the work acked)."""
    nc = None
    frames = []
    for d in deliveries:
        nc = d._nc
        frames.append(d.ack_frame())
    if nc is not None:
        await wire.send(nc, b"".join(frames))


def _start_span(d: Delivery) -> None:
    # The span stays open until the caller acks: it measures the processing.
    d._span = tracing.consume_span(d.event.event_type, d.subject, d.event.event_id, d.headers)


def _ack_tokens(reply: bytes) -> tuple[list[bytes], int]:
    """The tokens of a JetStream ack subject and where <stream> is among them:
    $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>, or the longer
    form with domain and account hash in front (and a token at the end)."""
    t = reply.split(b".")
    return t, 2 if len(t) == 9 else 4


def ack_seqs(reply: bytes) -> tuple[int, int]:
    """(stream sequence, consumer delivery sequence) from a JetStream ack subject. The
    delivery sequence counts every delivery of the consumer, redeliveries included."""
    t, s = _ack_tokens(reply)
    return int(t[s + 3]), int(t[s + 4])


def ack_info(reply: bytes) -> tuple[int, int]:
    """(stream sequence, delivery count) from a JetStream ack subject."""
    t, s = _ack_tokens(reply)
    return int(t[s + 3]), int(t[s + 2])


def stored_ns(reply: bytes) -> int:
    """When the stream stored the message (server clock, ns since epoch), from its ack
    subject (the <ts> token)."""
    t, s = _ack_tokens(reply)
    return int(t[s + 5])


class _LazyHeaders(Mapping[str, str]):
    """Headers parsed only if a content filter actually reads one."""

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: bytes | None) -> None:
        self._raw = raw
        self._parsed: dict[str, str] | None = None

    def _get(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = wire.parse_headers(self._raw)
        return self._parsed

    def __getitem__(self, key: str) -> str:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def normalize_filter(f: str | Interest, partition: int | None, catalog: Catalog) -> str:
    """Subject filters always address the 7-token stored subject."""
    if isinstance(f, Interest):
        if f.event_type is not None:
            # The catalog knows where a type lives: one stream instead of four.
            spec = catalog.spec(f.event_type)
            f = msgspec.structs.replace(f, priority=spec.priority, domain=spec.domain)
        return f.pattern(partition)
    tokens = f.split(".")
    if not f or any(not t or t.strip() != t or " " in t for t in tokens):
        raise MeshError(f"invalid subject filter {f!r}: dot-separated tokens, no spaces")
    if tokens[-1] != ">" and len(tokens) == 6:
        tokens.append("*" if partition is None else str(partition))
    elif partition is not None:
        raise MeshError("partition= needs Interest(...) or a 6-token subject filter")
    return ".".join(tokens)


@dataclass
class SubscriptionStats:
    delivered: int = 0
    filtered_out: int = 0
    malformed: int = 0


class Subscription(AsyncResource):
    def __init__(
        self, mesh: Mesh, filters: list[str | Interest], opts: SubscriptionOptions
    ) -> None:
        self._mesh = mesh
        self.opts = opts
        self.filters = [normalize_filter(f, opts.partition, mesh.catalog) for f in filters]
        where = flt.parse(opts.where) if isinstance(opts.where, str) else opts.where
        self._match: Callable[[Event, Mapping[str, str] | None], bool] | None = (
            flt.compile(where) if where is not None else None
        )
        self._project = Projection(opts.project) if opts.project else None
        self._lanes: PriorityLanes[Delivery] = PriorityLanes(opts.burst)
        self._routes: list[wire.Route] = []
        self._consumers: list[tuple[str, str, bool]] = []  # stream, consumer, durable
        # Per stream: deliveries a durable consumer still had unacked when this
        # subscription bound to it (a previous process's), redelivered after ack_wait.
        self.unacked_at_start: dict[str, int] = {}
        self._closers: list[Callable[[Subscription], None]] = []
        self._closed = False
        self.stats = SubscriptionStats()

    # -- set-up ------------------------------------------------------------------------

    def _by_stream(self) -> dict[Priority, list[str]]:
        out: dict[Priority, list[str]] = {}
        for f in self.filters:
            for p in subjects.priorities_of(f):
                out.setdefault(p, []).append(f)
        if not out:
            raise MeshError(f"no priority stream matches {self.filters}: filters start with tm.")
        return out

    async def start(self) -> Self:
        nc = self._mesh.nc
        for priority, filters in self._by_stream().items():
            stream = priority.stream
            name = f"{self.opts.durable}-{priority.value}" if self.opts.durable else None
            deliver = await self._ensure_consumer(stream, name, filters)
            route = await wire.route(nc, deliver)
            route.set_handler(self.handler(priority, stream))
            self._routes.append(route)
        return self

    async def _ensure_consumer(self, stream: str, name: str | None, filters: list[str]) -> str:
        nc = self._mesh.nc
        config: dict[str, Any] = {
            "ack_policy": self.opts.ack,
            "ack_wait": int(self.opts.ack_wait * NS),
            "max_deliver": -1,
            "replay_policy": "instant",
            "flow_control": True,
            "idle_heartbeat": 5 * NS,
            **(
                {"filter_subject": filters[0]}
                if len(filters) == 1
                else {"filter_subjects": filters}
            ),
        }
        if self.opts.ack != "none":
            config["max_ack_pending"] = self.opts.max_ack_pending
        if name is None:
            deliver = nc.new_inbox()
            # A subscriber that dies without closing leaves nothing behind for long.
            config |= {
                "deliver_subject": deliver,
                "inactive_threshold": 30 * NS,
                "mem_storage": True,
                **self.opts.start.consumer_fields(),
            }
            resp = await jsapi.call(
                nc, f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
            )
            self._consumers.append((stream, resp["name"], False))
            return deliver
        # Durable: a fixed deliver subject, so a restarted process binds to the same
        # consumer and resumes after the last acked event (the start option only counts
        # the first time).
        deliver = f"_INBOX.tm-durable.{name}"
        config |= {"deliver_subject": deliver, "durable_name": name}
        try:
            info = await jsapi.consumer_info(nc, stream, name)
            existing = info["config"]
            if existing.get("ack_policy", "explicit") != self.opts.ack:
                # JetStream cannot change a consumer's ack policy, and acking with the
                # wrong one would ack too much or too little.
                raise MeshError(
                    f"durable consumer {name} on {stream} acks {existing.get('ack_policy')!r}"
                    f" but this subscriber acks {self.opts.ack!r}: delete the consumer"
                    f" (its position is lost) or use another durable name"
                )
            self.unacked_at_start[stream] = int(info.get("num_ack_pending", 0))
            config |= {
                k: existing[k]
                for k in ("deliver_policy", "opt_start_seq", "opt_start_time")
                if k in existing
            }
            action = "update"
        except jsapi.JetStreamApiError as e:
            if e.err_code != jsapi.CONSUMER_NOT_FOUND:
                raise
            config |= self.opts.start.consumer_fields()
            action = "create"
        await jsapi.call(
            nc,
            f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
            {"stream_name": stream, "config": config, "action": action},
        )
        self._consumers.append((stream, name, True))
        return deliver

    @property
    def consumers(self) -> list[tuple[str, str]]:
        """(stream, consumer name) of each JetStream consumer this subscription reads."""
        return [(stream, name) for stream, name, _ in self._consumers]

    def handler(self, priority: Priority, stream: str) -> wire.RawHandler:
        """What each message of `stream`'s consumer goes through: decoded, filtered,
        projected and put in its priority lane. The extension point for a part that
        consumes deliveries its own way (the Kafka bridge passes them through as bytes,
        `bridge_kafka/feed.py`); an override must answer `answer_control` messages and
        ack or term what it drops."""
        nc = self._mesh.nc
        put = self._lanes.put
        match = self._match
        transforms = self.opts.transforms
        project = self._project
        stats = self.stats
        decode = ev.decode

        def on_msg(
            subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> Awaitable[None] | None:
            if not data:
                return answer_control(nc, reply, headers)
            try:
                event = decode(data)
                if transforms:
                    event = transforms.upcast(event)
            except MalformedEvent as e:
                stats.malformed += 1
                return term_malformed(nc, subject, reply, e)
            if match is not None and not match(event, _LazyHeaders(headers)):
                stats.filtered_out += 1
                return wire.send(nc, ACK_FRAME % reply) if reply else None
            if project is not None:
                event = project.apply(event)
            seq = ack_info(reply)[0] if reply else 0
            put(
                priority,
                Delivery(nc, subject.decode(), reply, headers, event, priority, stream, seq, data),
            )
            return None

        return on_msg

    # -- consuming ---------------------------------------------------------------------

    async def next(self, timeout: float | None = None) -> Delivery:
        d = await asyncio.wait_for(self._lanes.get(), timeout)
        self.stats.delivered += 1
        if tracing.enabled():
            _start_span(d)
        return d

    async def next_many(self, max_items: int, timeout: float | None = None) -> list[Delivery]:
        """The next deliveries, most urgent first: waits (up to `timeout`, then raises
        TimeoutError) for one, then takes up to `max_items` in all of what is already here,
        without waiting again. For consumers that work in batches."""
        out = [await self.next(timeout)]
        take = self._lanes.get_nowait
        traced = tracing.enabled()
        while len(out) < max_items and (d := take()) is not None:
            if traced:
                _start_span(d)
            out.append(d)
        self.stats.delivered += len(out) - 1
        return out

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        if self._closed:
            raise StopAsyncIteration
        return await self.next()

    def pending(self, priority: Priority) -> int:
        """Events received and waiting in this process for `priority`."""
        return self._lanes.depth(priority)

    # -- teardown ------------------------------------------------------------------------

    def on_close(self, fn: Callable[[Subscription], None]) -> None:
        self._closers.append(fn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for route in self._routes:
            try:
                await route.close()
            except Exception as e:  # the connection may already be gone
                log.debug("unsubscribe: %r", e)
        # Events received but never handed out go back now, not after ack_wait: a durable
        # consumer reopened right away (or by another process) gets them at once.
        while self.opts.durable and (d := self._lanes.get_nowait()) is not None:
            try:
                await d.nak()
            except Exception as e:  # the connection may already be gone
                log.debug("nak on close: %r", e)
        for stream, name, durable in self._consumers:
            if not durable and self._mesh.nc.is_connected:
                try:
                    await jsapi.call(self._mesh.nc, f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
                except jsapi.JetStreamApiError as e:
                    log.debug("delete consumer %s: %s", name, e)
        for fn in self._closers:
            fn(self)


def utc(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / NS, UTC)

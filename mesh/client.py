"""`Mesh`: the one object services use to publish and subscribe.

async with Mesh.connect("nats://127.0.0.1:4222", service="trading",
                        user="trading", password="trading-dev") as mesh:
    seq = await mesh.publish(Event(event_type="ORDER_PLACED", symbol="AAPL",
                                   account="ACC42", payload={"qty": 100}))
    async with mesh.subscribe("tm.critical.>", durable="risk-desk") as sub:
        async for d in sub:
            ...
            await d.ack()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Self

import nats
from nats.aio.client import Client
from opentelemetry import trace

from mesh import events as ev
from mesh import jsapi, subjects, tracing, wire
from mesh.catalog import BUILTIN, Catalog
from mesh.config import MeshConfig
from mesh.errors import ConnectFailed, PayloadTooLarge, WrongPriority
from mesh.events import Event
from mesh.publisher import Publisher
from mesh.resource import AsyncResource
from mesh.subscriber import Interest, Subscription, SubscriptionOptions

log = logging.getLogger("mesh")


class Prepared:
    """An event validated and encoded once: subject, header block and JSON bytes."""

    __slots__ = ("event", "headers", "payload", "span", "subject")

    def __init__(
        self, event: Event, subject: str, headers: bytes, payload: bytes, span: Any
    ) -> None:
        self.event = event
        self.subject = subject
        self.headers = headers
        self.payload = payload
        self.span: trace.Span | None = span


class Mesh(AsyncResource):
    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        service: str = "mesh",
        user: str | None = "mesh",
        password: str | None = "mesh-dev",
        catalog: Catalog = BUILTIN,
        ack_timeout: float = 2.0,
        publish_deadline: float = 30.0,
        window: int = 8192,
        connect_timeout: float = 5.0,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if len(self.servers) == 1 and "," in self.servers[0]:
            self.servers = self.servers[0].split(",")
        self.service = service
        self.user = user
        self._password = password
        self.catalog = catalog
        self._ack_timeout = ack_timeout
        self._deadline = publish_deadline
        self._window = window
        self._connect_timeout = connect_timeout
        self._connect_error: Exception | None = None
        self._closing = False
        self.nc: Client = Client()
        wire.install_fast_parser(self.nc)
        self._publisher: Publisher | None = None
        self._subscriptions: set[Subscription] = set()

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def connect(cls, servers: str | Sequence[str] = "nats://127.0.0.1:4222", **kw: Any) -> Self:
        """A Mesh to use as `async with Mesh.connect(...) as mesh` (or `await m.start()`)."""
        return cls(servers, **kw)

    @classmethod
    def from_config(
        cls,
        cfg: MeshConfig,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> Self:
        return cls(
            url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}",
            service=cfg.service,
            user=user or cfg.nats.user or None,
            password=password if user else (cfg.nats.password or None),
            catalog=cfg.build_catalog(),
            ack_timeout=cfg.nats.ack_timeout,
            publish_deadline=cfg.nats.publish_deadline,
            connect_timeout=cfg.nats.connect_timeout,
        )

    async def start(self) -> Self:
        self._connect_error = None
        try:
            await self.nc.connect(
                servers=self.servers,
                name=f"tm-{self.service}",
                user=self.user,
                password=self._password,
                # A few tries per server at first: a wrong password or an address with no
                # server is reported at once instead of retried forever...
                max_reconnect_attempts=2,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # nats-py sleeps a float
                connect_timeout=self._connect_timeout,  # type: ignore[arg-type]
                # Publishes made while reconnecting wait here and go out on reconnect.
                pending_size=64 * 1024 * 1024,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except Exception as e:
            cause = self._connect_error or e
            raise ConnectFailed(self.servers, self.user, cause) from e
        # ...but once connected, a node going away is waited out forever.
        self.nc.options["max_reconnect_attempts"] = -1
        self._publisher = Publisher(
            self.nc,
            user=self.user or "",
            ack_timeout=self._ack_timeout,
            deadline=self._deadline,
            window=self._window,
        )
        await self._publisher.start()
        return self

    async def close(self) -> None:
        self._closing = True
        for sub in list(self._subscriptions):
            await sub.close()
        if self._publisher:
            await self._publisher.close()
        if not self.nc.is_closed:
            await self.nc.drain()

    async def _on_error(self, err: Exception) -> None:
        if not self.nc.is_connected and self._connect_error is None:
            self._connect_error = err
        if self._publisher and self._publisher.on_server_error(err):
            log.warning("%s", err)
            return
        log.warning("nats: %r", err)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("disconnected from NATS; publishes wait and retry")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to %s", self.nc.connected_url)
        if self._publisher:
            await self._publisher.resend_all()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("Mesh is not started: use `async with Mesh.connect(...)`")
        return self._publisher

    # -- publishing ------------------------------------------------------------------------

    def prepare(self, event: Event) -> Prepared:
        """Validate and encode; raises InvalidEvent and publishes nothing.

        Fills in `priority` (from the catalog) and `source` (this service) when unset.
        """
        subject, priority = subjects.route(
            self.catalog, event.event_type, event.symbol, event.account
        )
        if event.priority is None:
            event.priority = priority
        elif event.priority is not priority and event.priority != priority:
            raise WrongPriority(event.event_type, str(event.priority), priority.value)
        if not event.source:
            event.source = self.service
        payload = ev.encode(event)
        span = None
        carrier: dict[str, str] = {}
        if tracing.enabled():
            span, carrier = tracing.publish_span(
                event.event_type, subject, event.event_id, event.correlation_id
            )
        headers = wire.headers_block(
            event, carrier.get("traceparent", ""), carrier.get("tracestate", "")
        )
        size = len(headers) + len(payload)
        limit = self.nc._max_payload  # the server's, from its INFO on (re)connect
        if size > limit:
            if span is not None:
                span.end()
            raise PayloadTooLarge(size, limit)
        return Prepared(event, subject, headers, payload, span)

    async def publish(self, event: Event) -> int:
        """Publish and wait until JetStream stored it; returns the stream sequence."""
        (seq,) = await self.publish_many((event,))
        return seq

    async def publish_many(self, events: Iterable[Event]) -> list[int]:
        """Publish many with up to `window` acks in flight; every ack is checked.

        All events are validated before the first one is sent: one bad event means none
        of them is published.
        """
        prepared: list[Prepared] = []
        try:
            for e in events:
                prepared.append(self.prepare(e))
        except BaseException:
            _end_spans(prepared)
            raise
        return await self.publish_prepared(prepared)

    async def publish_prepared(self, prepared: Sequence[Prepared]) -> list[int]:
        try:
            acks = await self.publisher.publish_many(
                [(p.subject, p.headers, p.payload) for p in prepared]
            )
        except BaseException as e:
            _end_spans(prepared, e)
            raise
        for p, ack in zip(prepared, acks, strict=True):
            if p.span is not None:
                p.span.set_attribute("messaging.nats.stream.sequence", ack.seq)
                p.span.end()
        return [a.seq for a in acks]

    # -- subscribing -------------------------------------------------------------------

    def subscribe(self, *filters: str | Interest, **options: Any) -> Subscription:
        """A subscription over one or more subject filters; see SubscriptionOptions."""
        opts = SubscriptionOptions(**options)
        sub = Subscription(self, list(filters) or ["tm.>"], opts)
        self._subscriptions.add(sub)
        sub.on_close(self._subscriptions.discard)
        return sub

    # -- inspection ----------------------------------------------------------------------

    async def stream_info(self, name: str) -> dict[str, Any] | None:
        return await jsapi.stream_info(self.nc, name)


def _end_spans(prepared: Sequence[Prepared], error: BaseException | None = None) -> None:
    for p in prepared:
        if p.span is not None:
            if error is not None:
                p.span.record_exception(error)
            p.span.end()


async def connect_nats(url: str, user: str = "mesh", password: str = "mesh-dev") -> Client:
    """A plain nats-py connection, for tools that need no publisher."""
    return await nats.connect(url, user=user, password=password, max_reconnect_attempts=-1)

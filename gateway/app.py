"""The gateway process: a Quart app (WebSocket `/ws`, `/healthz`, `/metrics`, `/`) around
one `Gateway` holding what sessions share: the NATS connection, the shared subscriptions,
the verifier, permissions, limits and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quart import Quart, Response, websocket

from gateway import errors as E
from gateway import permissions as perm
from gateway import protocol
from gateway.auth import Verifier, token_from
from gateway.config import GatewaySettings
from gateway.fanout import Hub
from gateway.gcwatch import WATCH, BurstFreezer
from gateway.limits import Buckets
from gateway.metrics import Metrics
from gateway.session import Session
from mesh import gcpolicy, jsapi
from mesh.catalog import Catalog
from mesh.client import Mesh

log = logging.getLogger("gateway")
STATIC = Path(__file__).resolve().parent / "static"
# Sessions flushed between two yields to the event loop. An event from NATS needs several
# loop iterations to reach the fan-out (socket read, nats-py's parser, the group's pump
# task), one per yield: with a yield every 100 sessions a pass held events back for
# most of its length (measured: NATS-arrival age p99 40-50 ms, docs/gateway.md).
YIELD_EVERY = 25


class Gateway:
    def __init__(self, settings: GatewaySettings, mesh: Mesh, catalog: Catalog) -> None:
        self.settings = settings
        self.mesh = mesh
        self.catalog = catalog
        self.verifier = Verifier(settings.auth)
        self.permissions = perm.Permissions(perm.load(settings.permissions_file), catalog)
        self.hub = Hub(mesh, catalog)
        self.metrics = Metrics()
        self.metrics.groups = lambda: len(self.hub.groups)
        self.metrics.instance = settings.instance
        self.metrics.gc = WATCH.install()
        self.hub.arrived = self.metrics.arrived
        self.hub.ages = self.metrics.latency_of
        self.freezer = BurstFreezer(WATCH)
        self.metrics.queue_depth = self._queue_depth
        lim = settings.limits
        self.op_buckets = Buckets(lim.ops_per_s, lim.ops_burst)
        self.ip_buckets = Buckets(lim.connects_per_s_per_ip, lim.connect_burst_per_ip)
        self.user_conns: Counter[str] = Counter()
        self.sessions: set[Session] = set()
        self.draining = False
        self._nats_ok = True
        self._ticker: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self.flush_set: set[Session] = set()
        self.flush_wanted = asyncio.Event()
        if settings.flush_ms > 0:
            q = settings.queues
            self.hub.coalesce(self.flush_wanted, q.max_batch, q.max_batch_bytes)
        self._flusher: asyncio.Task[None] | None = None

    def _queue_depth(self) -> dict[str, int]:
        out = {"market": 0, "must": 0}
        for s in self.sessions:
            out["market"] += s.market_n
            out["must"] += s.must_n
        return out

    def start(self) -> None:
        # Everything built so far (imported modules, the app, config) lives as long as
        # the process: moved out of the collector's sight, so a full collection walks
        # only what came after (sessions). Before: one full collection per process
        # during the 1,000-client connect burst, 45-107 ms, all sessions stalled.
        gcpolicy.settle()
        WATCH.reset()  # count what happens while serving
        self._ticker = asyncio.create_task(self._tick())
        if self.settings.flush_ms > 0:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Flushes the sessions with non-critical events queued or in their groups'
        windows, flush_ms after the first of them arrived: the per-frame cost, not the
        per-event cost, limits a WebSocket server, so events that arrive within one window
        share a frame."""
        interval = self.settings.flush_ms / 1000
        loop = asyncio.get_running_loop()
        wanted = self.flush_wanted
        while True:
            # A window opens with the first event queued after a pass and is flushed
            # flush_ms later: an event waits at most one window (plus its place in the
            # pass), and no tick runs while nothing is queued.
            await wanted.wait()
            await asyncio.sleep(interval)
            wanted.clear()
            t, cpu = loop.time(), time.thread_time()
            self.hub.attach_windows()
            if self.flush_set:
                dirty = list(self.flush_set)
                self.flush_set.clear()
                for i, s in enumerate(dirty, 1):
                    s.flush()
                    if i % YIELD_EVERY == 0:
                        # A pass over 500 sessions takes 10-20 ms: let NATS deliveries
                        # (critical events) in between.
                        await asyncio.sleep(0)
                        # What arrived meanwhile rides with the sessions still ahead in
                        # this pass; the ones already flushed send it in the next.
                        self.hub.attach_windows()
                self.metrics.flush_pass.observe((loop.time() - t) * 1000)
                # CPU of this thread meanwhile: wall >> CPU means the process waited for
                # a core; wall ~ CPU that the work in and between the chunks was heavy.
                self.metrics.flush_pass_cpu.observe((time.thread_time() - cpu) * 1000)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now, wall = time.monotonic(), time.time()
            ok = self.mesh.nc.is_connected
            if ok != self._nats_ok:
                self._nats_ok = ok
                frame = protocol.status("ok" if ok else "degraded",
                                        dependency="nats", connected=ok)
                for s in self.sessions:
                    s.send_control(frame)
            for s in list(self.sessions):
                s.tick(now, wall)
            self.freezer.tick(now, len(self.sessions))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        nc = self.mesh.nc
        body: dict[str, Any] = {"nats": "ok" if nc.is_connected else "down"}
        if nc.is_connected:
            try:
                await asyncio.wait_for(jsapi.call(nc, "$JS.API.INFO"), 2.0)
                body["jetstream"] = "ok"
            except Exception as e:
                body["jetstream"] = f"down: {e}"
        else:
            body["jetstream"] = "unknown (nats down)"
        body["draining"] = self.draining
        body["connections"] = len(self.sessions)
        body["shared_subscriptions"] = len(self.hub.groups)
        ok = body["nats"] == "ok" and body["jetstream"] == "ok" and not self.draining
        return ok, body

    async def serve_ws(self, ws: Any) -> None:
        ip = ws.remote_addr or "?"
        token, subprotocol = token_from(ws.headers, ws.args, list(ws.requested_subprotocols))
        await ws.accept(subprotocol=subprotocol)
        try:
            if self.draining:
                raise E.GatewayError(E.DRAINING, "draining: connect to another instance")
            if not self.ip_buckets.take(ip):
                raise E.GatewayError(E.CONNECT_RATE, "too many connection attempts from your "
                                     "address: retry with backoff")
            principal = self.verifier.verify(token)
            lim = self.settings.limits
            if self.user_conns[principal.user] >= lim.max_connections_per_user:
                raise E.GatewayError(E.TOO_MANY_CONNECTIONS, "at most "
                                     f"{lim.max_connections_per_user} connections per user")
        except E.GatewayError as e:
            self.metrics.rejected[str(e.code)] += 1
            await ws.close(e.code, e.reason)
            return
        session = Session(self, ws, principal, ip)
        self.sessions.add(session)
        self.freezer.session_opened(time.monotonic())
        self.user_conns[principal.user] += 1
        self.metrics.connections = len(self.sessions)
        self.metrics.connections_total += 1
        session.send_control(protocol.status(
            "connected", user=principal.user, roles=list(principal.roles),
            expires=principal.expires, instance=self.settings.instance))
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.freezer.session_closed()
            self.user_conns[principal.user] -= 1
            if self.user_conns[principal.user] <= 0:
                del self.user_conns[principal.user]
            self.metrics.connections = len(self.sessions)
            if not self.sessions:
                self._empty.set()
            self.metrics.disconnects[str(session.close_code or "client")] += 1

    async def drain(self) -> None:
        """Tell every client to reconnect elsewhere with its resume point, then close."""
        self.draining = True
        for s in list(self.sessions):
            s.send_control(protocol.status("draining", resume=s.resume_point(),
                                           reconnect=True))
            s.fail(E.DRAINING, "draining: reconnect with your resume point")
        if self.sessions:
            self._empty.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), self.settings.drain_timeout_s)

    async def close(self) -> None:
        for task in (self._ticker, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.hub.close()


def create_app(gw: Gateway) -> Quart:
    app = Quart(__name__, static_folder=None)

    @app.websocket("/ws")
    async def ws() -> None:
        await gw.serve_ws(websocket._get_current_object())  # type: ignore[attr-defined]

    @app.get("/healthz")
    async def healthz() -> Response:
        ok, body = await gw.health()
        return Response(protocol._enc.encode(body), status=200 if ok else 503,
                        content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), content_type="text/plain; version=0.0.4")

    @app.get("/debug/gc")
    async def gc_pauses() -> Response:
        # Collector pauses of this process (which one answered: `instance`), with the
        # wall time of each older-generation collection (mesh bench gateway reads it).
        body = {"instance": gw.settings.instance, "summary": WATCH.summary(),
                "recent": list(WATCH.recent)}
        return Response(protocol._enc.encode(body), content_type="application/json")

    @app.get("/")
    async def index() -> Response:
        page = STATIC / "index.html"
        if not page.exists():
            return Response("no page", status=404)
        return Response(page.read_text(), content_type="text/html; charset=utf-8")

    return app

"""Serving: Uvicorn (default) or Hypercorn in this process (no worker fork), TLS 1.3
only when a certificate is configured, SO_REUSEPORT so several gateway processes can
share one port, and a SIGTERM that drains (clients are told to reconnect with their
resume point) before exiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway.app import Gateway, create_app
from gateway.asgi_ws import with_ws
from gateway.config import GatewaySettings
from mesh.catalog import Catalog
from mesh.client import Mesh

log = logging.getLogger("gateway.server")


class _Config(Config):
    def create_ssl_context(self) -> ssl.SSLContext | None:
        ctx = super().create_ssl_context()
        if ctx is not None:
            # Hypercorn allows TLS 1.2; a trading gateway serves 1.3 only.
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx


def disable_permessage_deflate() -> None:
    """Hypercorn always accepts permessage-deflate when a client offers it (browsers and
    the `websockets` client do). Compression runs per recipient, which undoes encoding
    each event once: profiled at 200 clients it was the largest cost (zlib 3.3 s of
    18.8 s). Hypercorn has no setting for it, so the offer is dropped before the
    handshake reads it; clients then simply get uncompressed frames."""
    from hypercorn.protocol import ws_stream

    original = ws_stream.Handshake.__init__
    if getattr(original, "_gateway_patched", False):
        return

    def init(self: ws_stream.Handshake, headers: list[tuple[bytes, bytes]],
             http_version: str) -> None:
        original(self, [(k, v) for k, v in headers
                        if k.lower() != b"sec-websocket-extensions"], http_version)

    init._gateway_patched = True  # type: ignore[attr-defined]
    ws_stream.Handshake.__init__ = init  # type: ignore[method-assign]


def bound_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(4096)
    s.set_inheritable(True)
    return s


def hypercorn_config(settings: GatewaySettings, sock: socket.socket) -> Config:
    cfg = _Config()
    cfg.bind = [f"fd://{sock.fileno()}"]
    cfg.websocket_max_message_size = settings.limits.hard_frame_bytes
    cfg.keep_alive_timeout = 30
    cfg.accesslog = None
    if settings.tls.cert_file:
        cfg.certfile = settings.tls.cert_file
        cfg.keyfile = settings.tls.key_file
    return cfg


async def run(settings: GatewaySettings, mesh: Mesh, catalog: Catalog,
              ready: asyncio.Event | None = None) -> int:
    if not settings.compression:
        disable_permessage_deflate()
    sock = bound_socket(settings.host, settings.port, settings.reuse_port)
    gw = Gateway(settings, mesh, catalog)
    quart_app = create_app(gw)
    # /ws on bare ASGI (gateway/asgi_ws.py) unless quart_ws asks for Quart's wrapper.
    app: Any = quart_app if settings.quart_ws else with_ws(gw, quart_app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def drain_then_stop() -> None:
        log.warning("SIGTERM: draining %d sessions", len(gw.sessions))
        await gw.drain()
        stop.set()

    draining: list[asyncio.Task[None]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: draining.append(loop.create_task(drain_then_stop())))
    gw.start()
    port = sock.getsockname()[1]
    print(f"gateway listening on {'wss' if settings.tls.cert_file else 'ws'}://"
          f"{settings.host}:{port}/ws", flush=True)
    if ready is not None:
        ready.set()
    try:
        if settings.server == "uvicorn":
            await _serve_uvicorn(app, settings, sock, stop)
        else:
            await serve(app, hypercorn_config(settings, sock), shutdown_trigger=stop.wait)
    finally:
        await gw.close()
        with contextlib.suppress(OSError):
            sock.close()
    return 0


async def _serve_uvicorn(app: Any, settings: GatewaySettings, sock: socket.socket,
                         stop: asyncio.Event) -> None:
    """The same Quart app on Uvicorn: its own signal handling is disabled so SIGTERM
    still drains first; TLS 1.3 minimum through its SSL context factory."""
    import uvicorn

    from gateway.uvicorn_ws import GatewayWsProtocol

    def tls13(_cfg: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = default()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx

    tls = bool(settings.tls.cert_file)
    cfg = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, ws=GatewayWsProtocol,
        ws_per_message_deflate=settings.compression,
        ws_max_size=settings.limits.hard_frame_bytes,
        ssl_certfile=settings.tls.cert_file or None, ssl_keyfile=settings.tls.key_file or None,
        ssl_context_factory=tls13 if tls else None,
    )

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = _Server(cfg)

    async def stopper() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stopper())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()

"""`/ws` as a bare ASGI handler, in front of the Quart app (which keeps the HTTP routes).

Quart wraps every WebSocket message: its `websocket` object is a context-local proxy, a
send goes through its own coroutine layers and every received message through an
`asyncio.Queue` fed by a second task per connection. The gateway sends one frame per
session per flush tick to every session, so that per-frame overhead is multiplied by
the number of connections. `AsgiWebSocket` gives `Session` the same small interface
(headers, args, subprotocols, accept/send/receive/close) straight on ASGI `send` and
`receive`: one await per frame, no extra task, no context copy."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from gateway.app import Gateway

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Disconnected(Exception):
    """The client went away (ASGI `websocket.disconnect`)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class Headers:
    """Case-insensitive, first value wins (enough for Authorization)."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._h: dict[str, str] = {}
        for k, v in raw:
            self._h.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))

    def get(self, key: str, default: str = "") -> str:
        return self._h.get(key.lower(), default)


def _no_send_now(payload: bytes) -> bool:
    return False


class AsgiWebSocket:
    __slots__ = ("_receive", "_send", "args", "headers", "remote_addr",
                 "requested_subprotocols", "send_now")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        # On the gateway's Uvicorn protocol (gateway/uvicorn_ws.py) an event frame can be
        # written synchronously when the socket is not backed up; elsewhere (Hypercorn)
        # send_now always says no and the ASGI send is used.
        proto = getattr(send, "__self__", None)
        self.send_now: Callable[[bytes], bool] = getattr(proto, "send_now", _no_send_now)
        self.headers = Headers(scope.get("headers") or [])
        self.args = dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1")))
        self.requested_subprotocols: list[str] = list(scope.get("subprotocols") or [])
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None

    async def accept(self, subprotocol: str | None = None) -> None:
        msg = await self._receive()
        if msg["type"] != "websocket.connect":
            raise Disconnected(msg.get("code"))
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol,
                          "headers": []})

    async def send(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def receive(self) -> str | bytes:
        msg = await self._receive()
        if msg["type"] == "websocket.disconnect":
            raise Disconnected(msg.get("code"))
        text = msg.get("text")
        if text is not None:
            return text  # type: ignore[no-any-return]
        return msg.get("bytes") or b""

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


def with_ws(gw: Gateway, http_app: Any, path: str = "/ws") -> ASGIApp:
    """The ASGI app served: `path` WebSocket connections go to the gateway directly,
    everything else (HTTP routes, lifespan) to `http_app`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == path:
            with contextlib.suppress(Disconnected):
                await gw.serve_ws(AsgiWebSocket(scope, receive, send))
            return
        await http_app(scope, receive, send)

    return app

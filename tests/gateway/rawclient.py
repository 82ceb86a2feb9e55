"""A minimal WebSocket client over a plain socket, for *stalled* clients.

The `websockets` client reads everything the server sends into its own memory even when
the application does not call recv() (measured: 13 MB in 0.1 s with max_queue=1), so it
cannot make the gateway's send block. This one reads only when asked, with a small
receive buffer: the TCP window closes and the gateway's queue has to hold the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from typing import Any


class Closed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class RawWs:
    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r = r
        self.w = w

    @classmethod
    async def open(cls, port: int, token: str, rcvbuf: int = 4096) -> RawWs:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
        r, w = await asyncio.open_connection(sock=s, limit=16 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        w.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(r, w)

    async def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.w.write(hdr + mask + masked)
        await self.w.drain()

    async def recv_text(self) -> str:
        while True:
            b0, b1 = await self.r.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.r.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.r.readexactly(8))
            payload = await self.r.readexactly(n)
            op = b0 & 0x0F
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Closed(code, payload[2:].decode(errors="replace"))
            if op == 1:
                return payload.decode()

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.recv_text(), timeout))  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.w.close()
        with contextlib.suppress(OSError):
            await self.w.wait_closed()

"""Uvicorn's WebSocket protocol with a synchronous send for the gateway's event frames.

Each ASGI `websocket.send` on Uvicorn goes through a coroutine (awaiting its `writable`
event), the message dict, websockets' sans-I/O framing (a `Frame` object, serialised,
then collected with `data_to_send`) and a str -> bytes encode, per recipient. Server
frames are never masked, so a text frame is a 2-10 byte header in front of the payload.
`send_now` writes that to the transport at once when nothing can make it wait (the
transport is not paused for flow control, the connection is open, no extension such
as permessage-deflate was negotiated): one call, no
coroutine, the payload bytes shared by every recipient. When it cannot, it returns
False and the caller uses the ordinary ASGI send, which waits for the socket.
(Measured in docs/gateway.md, "2026-11-27".)"""

from __future__ import annotations

import struct

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81
_OPEN = State.OPEN


def text_header(n: int) -> bytes:
    """Header of an unmasked, unfragmented text frame with an n-byte payload."""
    if n < 126:
        return bytes((_FIN_TEXT, n))
    if n < 65536:
        return _LEN16.pack(_FIN_TEXT, 126, n)
    return _LEN64.pack(_FIN_TEXT, 127, n)


class GatewayWsProtocol(WebSocketsSansIOProtocol):
    # Set once the handshake completed with no extension: what cannot change afterwards
    # is checked once, not per frame (this runs ~30,000 times a second).
    _plain_open = False

    def send_now(self, payload: bytes) -> bool:
        """Write one text frame (payload: UTF-8 JSON) now, or return False if the
        ordinary send must be used (flow control paused, not open, closing)."""
        if not self._plain_open:
            if (not self.handshake_complete or self.initial_response is not None
                    or self.conn.extensions):
                return False
            self._plain_open = True
        if (not self.writable.is_set() or self.close_sent or self.disconnected
                or self.conn.state is not _OPEN or self.transport.is_closing()):
            return False
        self.transport.write(text_header(len(payload)) + payload)
        return True

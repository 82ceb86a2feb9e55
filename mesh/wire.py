"""Event frames: headers and HPUB bytes built once per event.

This is the one module that reaches into nats-py internals (`_send_command`,
`_flush_pending`, `_process_msg`): building the HPUB frame ourselves skips nats-py's
per-call header re-encoding and per-publish flusher wake-up, and taking PubAcks straight
from the protocol parser skips a Msg object, a queue hop and a task switch per ack.
Together that is what lifts one Python process past nats-py's own `publish_async` (see
README, Benchmarks). nats-py is pinned in pyproject.toml; tests/test_publish.py and
tests/test_faults.py exercise every path here, reconnects included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats.aio.client as _nats_client
from nats.aio.client import Client
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from mesh.events import Event

HDR_MSG_ID = "Nats-Msg-Id"
HDR_CORRELATION = "Tm-Correlation-Id"
HDR_CAUSATION = "Tm-Causation-Id"
HDR_EVENT_TYPE = "Tm-Event-Type"
HDR_TRACEPARENT = "traceparent"
HDR_TRACESTATE = "tracestate"


def headers_block(event: Event, traceparent: str = "", tracestate: str = "") -> bytes:
    optional = ""
    if event.causation_id:
        optional += f"{HDR_CAUSATION}: {event.causation_id}\r\n"
    if traceparent:
        optional += f"{HDR_TRACEPARENT}: {traceparent}\r\n"
    if tracestate:
        optional += f"{HDR_TRACESTATE}: {tracestate}\r\n"
    return (
        f"NATS/1.0\r\n{HDR_MSG_ID}: {event.event_id}\r\n"
        f"{HDR_EVENT_TYPE}: {event.event_type}\r\n"
        f"{HDR_CORRELATION}: {event.correlation_id}\r\n{optional}\r\n"
    ).encode()


def hpub(subject: str, reply: str, headers: bytes, payload: bytes) -> bytes:
    hl = len(headers)
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        hl,
        hl + len(payload),
        headers,
        payload,
    )


async def write(nc: Client, frame: bytes) -> None:
    """Queue one protocol frame in nats-py's outgoing buffer (kept across reconnects)."""
    await nc._send_command(frame)


async def flush(nc: Client) -> None:
    """Wake nats-py's flusher for everything queued, unless a wake-up is already pending."""
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


async def send(nc: Client, frame: bytes) -> None:
    await write(nc, frame)
    await flush(nc)


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """A NATS header block as a dict; an inline status ("NATS/1.0 100 Idle Heartbeat")
    becomes Status / Description, as nats-py reports it."""
    if not raw:
        return {}
    first, _, rest = raw.partition(b"\r\n")
    out: dict[str, str] = {}
    status = first[9:].strip()
    if status:
        code, _, desc = status.partition(b" ")
        out["Status"] = code.decode()
        if desc:
            out["Description"] = desc.decode(errors="replace")
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().decode(errors="replace")] = value.strip().decode(errors="replace")
    return out


# handler(subject, reply, data, raw_headers); may return an awaitable for rare slow paths.
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], Awaitable[None] | None]


async def route(nc: Client, subject: str) -> Route:
    """A subscription whose messages skip nats-py's Msg objects, per-subscription queue
    and task: the protocol parser hands them to `Route.handler` directly. The
    subscription id survives reconnects (nats-py re-sends SUB with the same sid), so the
    route does too."""
    routes: dict[int, RawHandler] | None = getattr(nc, "_mesh_routes", None)
    if routes is None:
        routes = {}
        nc._mesh_routes = routes  # type: ignore[attr-defined]
        previous: Callable[..., Awaitable[None]] = nc._process_msg
        table = routes

        async def process_msg(
            sid: int, subj: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            handler = table.get(sid)
            if handler is None:
                await previous(sid, subj, reply, data, headers)
                return
            pending = handler(subj, reply, data, headers)
            if pending is not None:
                await pending

        nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
    sub = await nc.subscribe(subject)
    return Route(nc, sub, routes)


class Route:
    def __init__(self, nc: Client, sub: Any, routes: dict[int, RawHandler]) -> None:
        self._sub = sub
        self._routes = routes
        self.sid: int = sub._id

    def set_handler(self, handler: RawHandler) -> None:
        self._routes[self.sid] = handler

    async def close(self) -> None:
        self._routes.pop(self.sid, None)
        await self._sub.unsubscribe()


class FastParser(Parser):
    """nats-py's parser with a fast path for MSG/HMSG, the bulk of what a busy client reads.

    nats-py matches every control line with regular expressions and trims its buffer
    message by message; this walks the buffer with `find` and trims once per read. Any
    other operation (PING, INFO, -ERR, ...), or a message nats-py's own parser has half
    read, is left to nats-py's code, so only the common case is ours.
    """

    async def parse(self, data: bytes = b"") -> None:
        if self.state != AWAITING_CONTROL_LINE:
            await super().parse(data)
            return
        buf: bytearray = self.buf
        # One immutable copy per read: slicing bytes copies once, slicing a bytearray and
        # converting copies twice, and this loop runs once per message.
        if buf:
            buf.extend(data)
            b = bytes(buf)
        else:
            b = data
        process = self.nc._process_msg
        # routed subscriptions are called here directly, without a coroutine per message
        routes: dict[int, RawHandler] = getattr(self.nc, "_mesh_routes", None) or {}
        find, startswith = b.find, b.startswith
        size = len(b)
        pos = 0
        while pos < size:
            if startswith(b"HMSG ", pos):
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                args = b[pos + 5 : eol].split()
                if len(args) == 5:  # <subject> <sid> <reply> <header size> <total size>
                    subject, sid_, reply, hl, total = args
                else:  # <subject> <sid> <header size> <total size>
                    subject, sid_, hl, total = args
                    reply = b""
                start = eol + 2
                end = start + int(total)
                if end + 2 > size:
                    break  # the rest of this message comes with the next read
                split = start + int(hl)
                hdr: bytes | None = b[start:split] if split > start else None
                payload = b[split:end]
            elif startswith(b"MSG ", pos):
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                args = b[pos + 4 : eol].split()
                if len(args) == 4:  # <subject> <sid> <reply> <size>
                    subject, sid_, reply, total = args
                else:  # <subject> <sid> <size>
                    subject, sid_, total = args
                    reply = b""
                start = eol + 2
                end = start + int(total)
                if end + 2 > size:
                    break
                hdr = None
                payload = b[start:end]
            else:
                break
            pos = end + 2
            sid = int(sid_)
            handler = routes.get(sid)
            if handler is None:
                await process(sid, subject, reply, payload, hdr)
            else:
                pending = handler(subject, reply, payload, hdr)
                if pending is not None:
                    await pending
        if buf:
            del buf[:pos]
        elif pos < size:
            buf.extend(b[pos:] if pos else b)
        if buf and not (buf.startswith(b"MSG ") or buf.startswith(b"HMSG ")):
            await super().parse(b"")


# nats-py reads the socket in 32 KiB pieces (its module-wide DEFAULT_BUFFER_SIZE, which
# is also the StreamReader's limit): ~70 mesh events per read, each read a wakeup, a
# buffer copy of the partial message it ends with, and a parse call. 1 MiB pieces took
# ~0.6 us per event off the store sink's main thread (docs/store.md, Figures). A read
# returns what is there, so small messages are not delayed; memory is only what arrived.
READ_SIZE = 1 << 20


def install_fast_parser(nc: Client) -> None:
    """Before connect: nats-py keeps the parser object for the life of the client, and
    sizes its reads when it connects."""
    nc._ps = FastParser(nc)
    _nats_client.DEFAULT_BUFFER_SIZE = max(_nats_client.DEFAULT_BUFFER_SIZE, READ_SIZE)

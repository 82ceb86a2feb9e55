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

from nats.aio.client import Client

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
        subject.encode(), reply.encode(), hl, hl + len(payload), headers, payload
    )


async def write(nc: Client, frame: bytes) -> None:
    """Queue one protocol frame in nats-py's outgoing buffer (kept across reconnects)."""
    await nc._send_command(frame)


async def flush(nc: Client) -> None:
    """Wake nats-py's flusher once for everything queued since the last flush."""
    await nc._flush_pending()


RawHandler = Callable[[bytes, bytes, bytes | None], None]


async def route_acks(nc: Client, subject: str, handler: RawHandler) -> None:
    """Subscribe `subject` and hand its messages to `handler(subject, data, raw_headers)`
    directly from the parser. The subscription id survives reconnects (nats-py re-sends
    SUB with the same sid), so the route does too."""
    sub = await nc.subscribe(subject)
    sid = sub._id
    previous: Callable[..., Awaitable[None]] = nc._process_msg

    async def process_msg(
        msg_sid: int, subj: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if msg_sid == sid:
            handler(subj, data, headers)
            return
        await previous(msg_sid, subj, reply, data, headers)

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]

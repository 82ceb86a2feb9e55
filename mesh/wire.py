"""Event frames: headers and HPUB bytes built once per event.

This is the one module that writes through nats-py internals (`_send_command`,
`_flush_pending`): building the HPUB frame ourselves skips nats-py's per-call header
re-encoding and per-publish flusher wake-up, which is what lifts one Python process past
nats-py's own `publish_async` (see README, Benchmarks). nats-py is pinned in pyproject.toml
and tests/test_publish.py exercises every path here.
"""

from __future__ import annotations

from nats.aio.client import Client

from mesh.events import Event

HDR_MSG_ID = "Nats-Msg-Id"
HDR_CORRELATION = "Tm-Correlation-Id"
HDR_CAUSATION = "Tm-Causation-Id"
HDR_EVENT_TYPE = "Tm-Event-Type"
HDR_TRACEPARENT = "traceparent"
HDR_TRACESTATE = "tracestate"


def headers_block(event: Event, traceparent: str = "", tracestate: str = "") -> bytes:
    parts = [
        "NATS/1.0\r\n",
        f"{HDR_MSG_ID}: {event.event_id}\r\n",
        f"{HDR_EVENT_TYPE}: {event.event_type}\r\n",
        f"{HDR_CORRELATION}: {event.correlation_id}\r\n",
    ]
    if event.causation_id:
        parts.append(f"{HDR_CAUSATION}: {event.causation_id}\r\n")
    if traceparent:
        parts.append(f"{HDR_TRACEPARENT}: {traceparent}\r\n")
    if tracestate:
        parts.append(f"{HDR_TRACESTATE}: {tracestate}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


def hpub(subject: str, reply: str, headers: bytes, payload: bytes) -> bytes:
    hl = len(headers)
    return b"".join(
        (
            f"HPUB {subject} {reply} {hl} {hl + len(payload)}\r\n".encode(),
            headers,
            payload,
            b"\r\n",
        )
    )


async def write(nc: Client, frame: bytes) -> None:
    """Queue one protocol frame in nats-py's outgoing buffer (kept across reconnects)."""
    await nc._send_command(frame)


async def flush(nc: Client) -> None:
    """Wake nats-py's flusher once for everything queued since the last flush."""
    await nc._flush_pending()

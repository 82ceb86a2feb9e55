"""The JSON protocol: inbound operations (decoded strictly) and outbound frames.

Event frames are encoded once per event (UTF-8 bytes, the form written to the socket)
and shared by every recipient; a batch frame is the shared event frames joined into one
JSON array. Control frames (status, errors, pongs) are str.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from mesh.events import Event


class Subscribe(msgspec.Struct, tag_field="op", tag="subscribe", forbid_unknown_fields=True):
    id: str
    channel: str | None = None
    subject: str | None = None
    priority: str | None = None
    domain: str | None = None
    event_type: str | None = None
    symbol: str | None = None
    account: str | None = None
    filter: Any = None  # mesh.filters JSON form
    resume: dict[str, int] | None = None  # {stream: last seq seen}
    from_time: str | None = None  # ISO 8601; replay permission only
    snapshot: bool = False


class Unsubscribe(msgspec.Struct, tag_field="op", tag="unsubscribe", forbid_unknown_fields=True):
    id: str


class Ping(msgspec.Struct, tag_field="op", tag="ping", forbid_unknown_fields=True):
    id: str | None = None


class Pong(msgspec.Struct, tag_field="op", tag="pong", forbid_unknown_fields=True):
    t: int | None = None


class Refresh(msgspec.Struct, tag_field="op", tag="refresh", forbid_unknown_fields=True):
    token: str


Op = Subscribe | Unsubscribe | Ping | Pong | Refresh
decode_op = msgspec.json.Decoder(Op).decode


class EventFrame(msgspec.Struct, tag_field="type", tag="event"):
    pattern: str
    stream: str
    seq: int
    event: Event


_enc = msgspec.json.Encoder()
_CONFLATED_PREFIX = b'{"type":"event","conflated":true,'
_SNAPSHOT_PREFIX = b'{"type":"event","snapshot":true,'
_PLAIN_PREFIX_LEN = len(b'{"type":"event",')


def event_frame(pattern: str, stream: str, seq: int, event: Event) -> bytes:
    return _enc.encode(EventFrame(pattern, stream, seq, event))


def mark_conflated(frame: bytes) -> bytes:
    return _CONFLATED_PREFIX + frame[_PLAIN_PREFIX_LEN:]


def mark_snapshot(frame: bytes) -> bytes:
    return _SNAPSHOT_PREFIX + frame[_PLAIN_PREFIX_LEN:]


def batch(frames: list[bytes]) -> bytes:
    return batch_of(b",".join(frames))


def batch_of(joined: bytes) -> bytes:
    """A batch frame around event frames already joined with commas."""
    return b'{"type":"batch","events":[' + joined + b"]}"


def error(code: str, message: str, id: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if id is not None:
        body["id"] = id
    return _enc.encode(body).decode()


def status(state: str, **fields: Any) -> str:
    return _enc.encode({"type": "status", "state": state, **fields}).decode()


def pong(id: str | None) -> str:
    return _enc.encode({"type": "pong", "id": id, "t": time.time_ns()}).decode()


def heartbeat() -> str:
    return _enc.encode({"type": "ping", "t": time.time_ns()}).decode()

"""The event model: one typed header plus a free-form payload.

Events are msgspec Structs, so they are validated when decoded from the wire and encoded
once (bytes shared by every recipient).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from mesh.catalog import Priority
from mesh.errors import MalformedEvent, NotSerializable
from mesh.ids import uuid7


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    event_type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    symbol: str | None = None
    account: str | None = None
    tenant: str | None = None
    event_id: str = msgspec.field(default_factory=uuid7)
    # A root event starts its own correlation: empty means "same as event_id".
    correlation_id: str = ""
    causation_id: str | None = None
    # Filled from the catalog at publish time; a wrong value is refused, not corrected.
    priority: Priority | None = None
    timestamp: int = msgspec.field(default_factory=time.time_ns)  # UTC, ns since epoch
    source: str = ""
    version: int = 1

    def __post_init__(self) -> None:
        if not self.correlation_id:
            self.correlation_id = self.event_id

    def caused(self, event_type: str, **fields: Any) -> Event:
        """A new event caused by this one: same correlation, causation = this event."""
        return Event(
            event_type=event_type,
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
            **fields,
        )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    try:
        return _encoder.encode(event)
    except (TypeError, ValueError, OverflowError) as e:
        raise NotSerializable(str(e)) from e


def decode(data: bytes | memoryview) -> Event:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as e:
        raise MalformedEvent(f"not a valid event: {e}") from e


def to_builtins(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(event)
    return out

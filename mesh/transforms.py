"""Consumer-side schema evolution: per-type version upcasters and field projections.

A producer keeps emitting version 1 while consumers already read version 3: the
consumer's registry upcasts 1 -> 2 -> 3 on receipt, so old producers and new consumers
interoperate without a flag day. Projections trim payloads to the fields a consumer asked
for (e.g. a phone that shows only price and size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from mesh.errors import MalformedEvent
from mesh.events import Event

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


class TransformError(MalformedEvent):
    pass


class Transforms:
    """Upcasters keyed by (event_type, from_version); each lifts a payload one version."""

    def __init__(self) -> None:
        self._up: dict[tuple[str, int], Upcaster] = {}
        self._latest: dict[str, int] = {}

    def register(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        key = (event_type, from_version)
        if key in self._up:
            raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
        self._up[key] = fn
        self._latest[event_type] = max(self._latest.get(event_type, 1), from_version + 1)

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def deco(fn: Upcaster) -> Upcaster:
            self.register(event_type, from_version, fn)
            return fn

        return deco

    def latest(self, event_type: str) -> int:
        return self._latest.get(event_type, 1)

    def upcast(self, event: Event) -> Event:
        """The event at the newest version this registry knows. Newer events pass as they are."""
        version, payload = event.version, event.payload
        while (fn := self._up.get((event.event_type, version))) is not None:
            try:
                payload = fn(dict(payload))
            except Exception as e:
                raise TransformError(
                    f"upcasting {event.event_type} v{version} (event {event.event_id}) failed: "
                    f"{e!r}"
                ) from e
            version += 1
        if version == event.version:
            return event
        return msgspec.structs.replace(event, payload=payload, version=version)

    def __bool__(self) -> bool:
        return bool(self._up)


class Projection:
    """Keep only the listed payload fields; dotted paths reach into nested objects."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.paths = [tuple(f.split(".")) for f in fields]
        if not self.paths or any(not all(p) for p in self.paths):
            raise ValueError("a projection needs field names like 'price' or 'book.bid'")

    def apply(self, event: Event) -> Event:
        out: Payload = {}
        for path in self.paths:
            src: Any = event.payload
            for key in path:
                if not isinstance(src, dict) or key not in src:
                    break
                src = src[key]
            else:
                dst = out
                for key in path[:-1]:
                    dst = dst.setdefault(key, {})
                dst[path[-1]] = src
        return msgspec.structs.replace(event, payload=out)

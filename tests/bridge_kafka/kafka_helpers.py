"""Kafka-side helpers for the bridge tests: produce and read records, blocking calls
kept off the event loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer

from mesh import events as ev
from mesh.events import Event


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]],
) -> None:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 2,
            "message.max.bytes": 4_000_000,
        }
    )
    for key, value, headers in records:
        while True:
            try:
                p.produce(topic, value, key, headers=headers or [])
                break
            except BufferError:
                p.poll(0.1)
    left = p.flush(30)
    assert left == 0, f"{left} records not delivered"


async def produce_events(bootstrap: str, topic: str, events: list[Event]) -> None:
    records = [((e.symbol or "").encode() or None, ev.encode(e), None) for e in events]
    await asyncio.to_thread(produce, bootstrap, topic, records)


def _reader(bootstrap: str, topic: str) -> Any:
    """A consumer of its own group that reads `topic` from the start and commits nothing."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    return c


def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list[Any]:
    """Records of a topic from the start until `expect` have been read (or timeout)."""
    c = _reader(bootstrap, topic)
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list[Any]:
    return await asyncio.to_thread(read_all, bootstrap, topic, expect, timeout)


def settle_extra(bootstrap: str, topic: str, have: int, grace: float = 2.0) -> int:
    """How many records the topic holds after `grace` seconds more (duplicate checks)."""
    return len(read_all(bootstrap, topic, have + 1_000_000, grace))


def read_until_ids(
    bootstrap: str, topic: str, want: set[str], timeout: float = 60.0, grace: float = 2.0
) -> list[Any]:
    """Records of a topic from the start until every wanted event id has been seen, then
    `grace` seconds more, so duplicates anywhere in the topic are counted too."""
    c = _reader(bootstrap, topic)
    out: list[Any] = []
    missing = set(want)
    deadline = time.monotonic() + timeout
    try:
        while missing and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    out.append(m)
                    missing.discard(ev.decode(m.value()).event_id)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            out.extend(m for m in c.consume(1000, 0.2) if m.error() is None)
    finally:
        c.close()
    return out

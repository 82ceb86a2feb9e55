"""Mapping rules applied to one record: Kafka record -> NATS message, NATS event -> Kafka
record. Pure functions (no I/O), so every rule is testable on its own.

Headers that cross the bridge:
* `tm-origin`: where an event entered the bridge ("nats" on Kafka records the bridge
  produced, "kafka" on NATS messages it published). A record is never sent back to the
  side named by its origin: that is the loop breaker for two-way setups.
* correlation id and W3C `traceparent`/`tracestate`, both ways.
* `Nats-Msg-Id`: the event id, or, for foreign records, an id derived from
  topic/partition/offset; a redelivered record is then a JetStream duplicate, never a
  second stored message.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from bridge_kafka.config import InboundRule, OutboundRule
from bridge_kafka.errors import Poison
from bridge_kafka.feed import Passed
from mesh import events as ev
from mesh import subjects, wire
from mesh.catalog import Catalog, Priority
from mesh.errors import InvalidEvent, MalformedEvent, UnknownEventType
from mesh.events import Event

ORIGIN = "tm-origin"  # Kafka header name
HDR_ORIGIN = "Tm-Origin"  # NATS header name
HDR_KAFKA_POS = "Tm-Kafka-Pos"
KAFKA_CORRELATION = "tm-correlation-id"
KAFKA_EVENT_ID = "tm-event-id"
KAFKA_EVENT_TYPE = "tm-event-type"
KAFKA_NATS_POS = "tm-nats-pos"
FROM_KAFKA = "kafka"
FROM_NATS = "nats"

# Foreign records get a stable event id from their position: the same record read twice
# gets the same id (and so the same Nats-Msg-Id).
_FOREIGN_NS = uuid.UUID("6f1c2a5e-7b0d-4c1e-9a43-5b8e0d2f9c17")

# As confluent-kafka hands them over (values may be str, bytes or None).
KafkaHeaders = list[tuple[str, str | bytes | None]]
_json = msgspec.json.Decoder(dict[str, Any])


class NatsItem(msgspec.Struct):
    """What the publisher sends: subject, header block, payload; and the priority, whose
    stream the subject goes to."""

    subject: str
    headers: bytes
    payload: bytes
    priority: Priority


def header(headers: KafkaHeaders | None, name: str) -> str | None:
    if not headers:
        return None
    for k, v in headers:
        if k == name:
            if v is None:
                return ""
            return v.decode(errors="replace") if isinstance(v, bytes) else v
    return None


def came_from_nats(headers: KafkaHeaders | None) -> bool:
    return header(headers, ORIGIN) == FROM_NATS


_ORIGIN_KAFKA_RAW = f"{HDR_ORIGIN}: {FROM_KAFKA}\r\n".encode()


def nats_came_from_kafka(d: Passed) -> bool:
    """Origin check on the raw header block: parsing every delivery's headers into a dict
    cost more than producing it to Kafka."""
    raw = d.raw_headers
    return raw is not None and _ORIGIN_KAFKA_RAW in raw


def foreign_event_id(topic: str, partition: int, offset: int) -> str:
    return str(uuid.uuid5(_FOREIGN_NS, f"{topic}/{partition}/{offset}"))


def _pick(
    src: str, key: bytes | None, headers: KafkaHeaders | None, body: dict[str, Any]
) -> str | None:
    if not src:
        return None
    if src == "key":
        return key.decode(errors="replace") if key else None
    kind, _, name = src.partition(":")
    if kind == "header":
        return header(headers, name)
    value = body.get(name)
    return None if value is None else str(value)


def kafka_to_event(
    rule: InboundRule,
    catalog: Catalog,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: KafkaHeaders | None,
    timestamp_ms: int,
    max_bytes: int,
) -> Event:
    """The event a record stands for; raises Poison (with the reason) if it is none."""
    if value is None:
        raise Poison("empty", "the record has no value")
    if len(value) > max_bytes:
        raise Poison("too large", f"{len(value)} bytes > {max_bytes}")
    if rule.format == "event":
        try:
            event = ev.decode(value)
        except MalformedEvent as e:
            raise Poison("not JSON" if not _is_json(value) else "not an event", str(e)) from e
    else:
        try:
            body = _json.decode(value)
        except msgspec.DecodeError as e:
            raise Poison("not JSON", f"not a JSON object: {e}") from e
        event_type = rule.event_type or _pick(rule.event_type_from, key, headers, body)
        if not event_type:
            raise Poison("unknown type", f"no event type at {rule.event_type_from!r}")
        eid = foreign_event_id(topic, partition, offset)
        event = Event(
            event_type=event_type,
            payload=body,
            symbol=_pick(rule.symbol_from, key, headers, body),
            account=_pick(rule.account_from, key, headers, body),
            event_id=eid,
            correlation_id=header(headers, KAFKA_CORRELATION) or eid,
            timestamp=timestamp_ms * 1_000_000 if timestamp_ms > 0 else time.time_ns(),
            source=f"kafka:{topic}",
        )
    return event


def _is_json(value: bytes) -> bool:
    try:
        msgspec.json.decode(value)
        return True
    except msgspec.DecodeError:
        return False


def event_to_nats(
    event: Event,
    catalog: Catalog,
    topic: str,
    partition: int,
    offset: int,
    headers: KafkaHeaders | None,
    max_bytes: int,
    raw: bytes | None = None,
) -> NatsItem:
    """Subject, headers and payload for JetStream; raises Poison for an unknown type or an
    invalid subject token. `raw`: the record value, reused when it is the event as is."""
    try:
        subject, priority = subjects.route(catalog, event.event_type, event.symbol, event.account)
    except UnknownEventType as e:
        raise Poison("unknown type", str(e)) from e
    except InvalidEvent as e:
        raise Poison("invalid event", str(e)) from e
    if event.priority is None:
        event.priority = priority
        raw = None  # the stored form carries the priority: encode it
    elif event.priority != priority:
        raise Poison(
            "invalid event", f"priority {event.priority} but {event.event_type} is {priority}"
        )
    # An event that arrived complete is stored as it came (decoding validated it).
    payload = raw if raw is not None and event.source else ev.encode(event)
    lines = [
        f"{wire.HDR_MSG_ID}: {event.event_id}",
        f"{wire.HDR_EVENT_TYPE}: {event.event_type}",
        f"{wire.HDR_CORRELATION}: {event.correlation_id}",
        f"{HDR_ORIGIN}: {FROM_KAFKA}",
        f"{HDR_KAFKA_POS}: {topic}/{partition}/{offset}",
    ]
    if event.causation_id:
        lines.append(f"{wire.HDR_CAUSATION}: {event.causation_id}")
    for name in (wire.HDR_TRACEPARENT, wire.HDR_TRACESTATE):
        value = header(headers, name)
        if value:
            lines.append(f"{name}: {value}")
    block = ("NATS/1.0\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    if len(block) + len(payload) > max_bytes:
        raise Poison("too large", f"{len(block) + len(payload)} bytes > {max_bytes}")
    return NatsItem(subject, block, payload, priority)


_FROM_NATS = FROM_NATS.encode()


def nats_to_kafka(rule: OutboundRule, d: Passed) -> tuple[bytes | None, bytes, KafkaHeaders]:
    """Key, value and headers of the Kafka record for one NATS event. The value is the
    event as stored (the same JSON, not decoded and encoded again)."""
    f = d.fields
    key_value = f.symbol if rule.key == "symbol" else f.account
    headers: KafkaHeaders = [
        (ORIGIN, _FROM_NATS),
        (KAFKA_EVENT_ID, f.event_id),
        (KAFKA_EVENT_TYPE, f.event_type),
        (KAFKA_CORRELATION, f.correlation_id),
        (KAFKA_NATS_POS, f"{d.stream}/{d.seq}"),
    ]
    raw = d.raw_headers
    if raw is not None and b"trace" in raw:  # parse only when there is something to carry
        nats_headers = d.headers
        for name in (wire.HDR_TRACEPARENT, wire.HDR_TRACESTATE):
            value = nats_headers.get(name)
            if value:
                headers.append((name, value))
    return (key_value.encode() if key_value else None), d.data, headers

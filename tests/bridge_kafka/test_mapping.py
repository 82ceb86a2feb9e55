"""Mapping rules and config on their own (no servers)."""

from __future__ import annotations

import msgspec
import pytest

from bridge_kafka import config, mapping
from bridge_kafka.config import InboundRule
from bridge_kafka.errors import BridgeConfigError, Poison
from mesh.catalog import BUILTIN
from mesh.events import Event, encode


def _foreign(**kw: str) -> InboundRule:
    return InboundRule(topics=["t"], format="foreign", **kw)


def test_foreign_record_fields_from_key_header_and_body() -> None:
    rule = _foreign(event_type_from="header:type", symbol_from="key", account_from="field:desk")
    e = mapping.kafka_to_event(
        rule,
        BUILTIN,
        "t",
        2,
        41,
        b"AAPL",
        b'{"px": 1, "desk": "D7"}',
        [("type", b"PRICE_UPDATE"), ("tm-correlation-id", b"corr-1")],
        1_700_000_000_000,
        10_000,
    )
    assert (e.event_type, e.symbol, e.account, e.correlation_id) == (
        "PRICE_UPDATE",
        "AAPL",
        "D7",
        "corr-1",
    )
    assert e.timestamp == 1_700_000_000_000 * 1_000_000
    # Same position, same id: a redelivered record is a JetStream duplicate.
    again = mapping.kafka_to_event(
        rule,
        BUILTIN,
        "t",
        2,
        41,
        b"AAPL",
        b'{"px": 1, "desk": "D7"}',
        [("type", b"PRICE_UPDATE")],
        0,
        10_000,
    )
    assert again.event_id == e.event_id == mapping.foreign_event_id("t", 2, 41)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff not json", "not JSON"),
        (b'{"event_type": 5}', "not an event"),
        (b"x" * 20_001, "too large"),
        (None, "empty"),
    ],
)
def test_poison_reasons(value: bytes | None, reason: str) -> None:
    with pytest.raises(Poison) as info:
        mapping.kafka_to_event(
            InboundRule(topics=["t"]), BUILTIN, "t", 0, 0, None, value, None, 0, 20_000
        )
    assert info.value.reason == reason


def test_unknown_type_is_poison_at_routing() -> None:
    e = Event(event_type="NOPE", symbol="X")
    with pytest.raises(Poison) as info:
        mapping.event_to_nats(e, BUILTIN, "t", 0, 0, None, 1_000_000)
    assert info.value.reason == "unknown type"


def test_nats_headers_carry_id_origin_correlation_and_traceparent() -> None:
    e = Event(event_type="PRICE_UPDATE", symbol="AAPL", correlation_id="c9")
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    item = mapping.event_to_nats(e, BUILTIN, "t", 1, 7, [("traceparent", tp)], 1_000_000)
    block = item.headers.decode()
    assert f"Nats-Msg-Id: {e.event_id}" in block
    assert "Tm-Origin: kafka" in block
    assert "Tm-Correlation-Id: c9" in block
    assert f"traceparent: {tp.decode()}" in block
    assert item.subject == "tm.high.market.PRICE_UPDATE.AAPL._"
    assert msgspec.json.decode(item.payload)["event_id"] == e.event_id
    assert mapping.came_from_nats([("tm-origin", b"nats")])
    assert not mapping.came_from_nats([("tm-origin", b"kafka")])
    assert encode(e)


def test_config_refuses_a_foreign_rule_without_type_and_bad_sources() -> None:
    with pytest.raises(BridgeConfigError, match="event_type"):
        config.loads('bootstrap = "x"\n[[inbound]]\ntopics = ["a"]\nformat = "foreign"\n')
    with pytest.raises(BridgeConfigError, match="header:<name>"):
        config.loads(
            '[[inbound]]\ntopics = ["a"]\nformat = "foreign"\nevent_type = "PRICE_UPDATE"\n'
            'symbol_from = "somewhere"\n'
        )
    with pytest.raises(BridgeConfigError, match="unknown"):
        config.loads('colour = "blue"\n')

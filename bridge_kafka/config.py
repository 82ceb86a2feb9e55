"""The bridge's configuration: a TOML file (`mesh bridge --config bridge.toml`).

bootstrap = "127.0.0.1:9092"      # empty: the bridge is off
name = "bridge-1"                 # consumer group, durable and origin are named from it

[[inbound]]                       # Kafka -> NATS
topics = ["tm.events"]
format = "event"                  # the record value is a mesh Event (JSON)

[[inbound]]
topics = ["prices"]
format = "foreign"                # any JSON object; the event is built from the record
event_type = "PRICE_UPDATE"       # or event_type_from = "header:type" / "field:type"
symbol_from = "key"               # "key", "header:<name>", "field:<name>" or ""
account_from = ""

[[outbound]]                      # NATS -> Kafka
filters = ["tm.*.market.>"]
topic = "tm.market"
key = "symbol"                    # the record key: "symbol" or "account"
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from bridge_kafka.errors import BridgeConfigError

# The two directions, spelled as in the bridge's status and metrics.
DirectionName = Literal["kafka_to_nats", "nats_to_kafka"]
DIRECTIONS: tuple[DirectionName, ...] = ("kafka_to_nats", "nats_to_kafka")
# Each direction's rule table in the config file.
RULES: dict[DirectionName, Literal["inbound", "outbound"]] = {
    "kafka_to_nats": "inbound",
    "nats_to_kafka": "outbound",
}


class InboundRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    topics: list[str]
    format: Literal["event", "foreign"] = "event"
    event_type: str = ""
    event_type_from: str = ""
    symbol_from: str = "key"
    account_from: str = ""


class OutboundRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    filters: list[str]
    topic: str
    key: Literal["symbol", "account"] = "symbol"


class BridgeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    bootstrap: str = ""
    name: str = "bridge"
    # Kafka -> NATS poison records go to this Kafka topic (the side they came from)...
    dlq_topic: str = "tm.bridge.dlq"
    # ...NATS -> Kafka poison events to this subject, stored in the bridge's own stream.
    dlq_subject: str = "tmbridge.dlq"
    max_record_bytes: int = 1_000_000
    # Records taken from Kafka but not yet acked by JetStream (bounds memory).
    max_inflight_in: int = 20_000
    # JetStream deliveries not yet confirmed by Kafka (the consumer's max_ack_pending).
    max_inflight_out: int = 20_000
    # Seconds before JetStream redelivers an event the bridge has not acked.
    ack_wait: float = 10.0
    # Extra librdkafka settings for both clients (e.g. security).
    kafka: dict[str, str] = msgspec.field(default_factory=dict)
    inbound: list[InboundRule] = msgspec.field(default_factory=list)
    outbound: list[OutboundRule] = msgspec.field(default_factory=list)

    @property
    def group_id(self) -> str:
        return f"tm-bridge-{self.name}"

    @property
    def durable(self) -> str:
        return f"tm-bridge-{self.name}"

    @property
    def status_subject(self) -> str:
        return status_subject(self.name)

    @property
    def directions(self) -> list[DirectionName]:
        """The directions this config has rules for."""
        return [d for d in DIRECTIONS if getattr(self, RULES[d])]

    def only(self, direction: DirectionName) -> BridgeConfig:
        """This config with one direction's rules: what a process serving only that
        direction runs. Its name is unchanged, and with it the consumer group and the
        durable consumers, so positions carry over between one process for both
        directions and one per direction (decisions §22)."""
        if direction not in self.directions:
            raise BridgeConfigError(
                f"bridge {self.name}: no [[{RULES[direction]}]] rules, so nothing to run"
                f" for {direction}; add rules or run the other direction"
            )
        return msgspec.structs.replace(self, **{RULES[d]: [] for d in DIRECTIONS if d != direction})

    def validate(self) -> BridgeConfig:
        for r in self.inbound:
            if r.format == "foreign" and not (r.event_type or r.event_type_from):
                raise BridgeConfigError(
                    f"inbound rule for {r.topics}: a foreign rule needs event_type or "
                    "event_type_from"
                )
            for src in (r.event_type_from, r.symbol_from, r.account_from):
                if src and src != "key" and not src.startswith(("header:", "field:")):
                    raise BridgeConfigError(
                        f"inbound rule for {r.topics}: {src!r} is not 'key', "
                        "'header:<name>' or 'field:<name>'"
                    )
        return self


def status_subject(name: str, direction: DirectionName | None = None) -> str:
    """Every process of the bridge `name` answers on the first; a process that serves one
    direction also on `<first>.<direction>` (how a caller asks that process alone)."""
    return f"tmbridge.status.{name}" + (f".{direction}" if direction else "")


def loads(text: str) -> BridgeConfig:
    try:
        return msgspec.convert(tomllib.loads(text), BridgeConfig).validate()
    except (msgspec.ValidationError, tomllib.TOMLDecodeError) as e:
        raise BridgeConfigError(f"bridge config: {e}") from e


def load(path: str | Path) -> BridgeConfig:
    try:
        return loads(Path(path).read_text())
    except OSError as e:
        raise BridgeConfigError(f"bridge config {path}: {e}") from e


def dumps(cfg: BridgeConfig) -> str:
    """The config as TOML (for a bridge started as a separate process)."""
    scalars = {
        k: v for k, v in msgspec.structs.asdict(cfg).items() if not isinstance(v, list | dict)
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
    if cfg.kafka:
        lines.append("[kafka]")
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in cfg.kafka.items()]
    for table, rules in (("inbound", cfg.inbound), ("outbound", cfg.outbound)):
        for r in rules:
            lines.append(f"[[{table}]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in msgspec.structs.asdict(r).items()]
    return "\n".join(lines) + "\n"

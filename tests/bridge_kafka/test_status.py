"""A bridge run as one process per direction: the config split, each process's metrics,
and the merged status (`bridge_kafka/status.py`). Pure functions; the processes
themselves run in test_split.py."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bridge_kafka import status
from bridge_kafka.config import BridgeConfig, DirectionName
from bridge_kafka.errors import BridgeConfigError
from bridge_kafka.metrics import Metrics

BOTH: list[DirectionName] = ["kafka_to_nats", "nats_to_kafka"]


def _cfg(**rules: Any) -> BridgeConfig:
    base = {"bootstrap": "127.0.0.1:9092", "name": "b1"}
    return msgspec.convert(base | rules, BridgeConfig).validate()


def _reply(
    serves: list[DirectionName], configured: list[DirectionName] = BOTH, **health: Any
) -> dict[str, Any]:
    """One process's status, as Metrics.status makes it."""
    m = Metrics(serves=serves, configured=configured)
    m.kafka_up = m.nats_up = True
    for k, v in health.items():
        setattr(m, k, v)
    for d in serves:
        getattr(m, d).delivered = 10 if d == "kafka_to_nats" else 20
    return m.status() | {"name": "b1"}


def test_only_keeps_one_directions_rules_and_the_name() -> None:
    cfg = _cfg(inbound=[{"topics": ["t"]}], outbound=[{"filters": ["tm.>"], "topic": "o"}])
    assert cfg.directions == BOTH
    k2n = cfg.only("kafka_to_nats")
    assert (k2n.directions, k2n.name, k2n.group_id) == (["kafka_to_nats"], "b1", cfg.group_id)
    n2k = cfg.only("nats_to_kafka")
    assert (n2k.directions, n2k.durable) == (["nats_to_kafka"], cfg.durable)
    assert cfg.directions == BOTH  # the original is unchanged


def test_only_a_direction_without_rules_is_a_clear_error() -> None:
    cfg = _cfg(inbound=[{"topics": ["t"]}])
    with pytest.raises(BridgeConfigError, match=r"no \[\[outbound\]\] rules.*nats_to_kafka"):
        cfg.only("nats_to_kafka")


def test_a_part_reports_and_exports_only_its_direction_with_its_part_label() -> None:
    m = Metrics(serves=["nats_to_kafka"], configured=BOTH, part="nats_to_kafka")
    s = m.status()
    assert "nats_to_kafka" in s
    assert "kafka_to_nats" not in s
    assert (s["serves"], s["configured"]) == (["nats_to_kafka"], BOTH)
    text = m.prometheus("b1")
    assert 'direction="kafka_to_nats"' not in text
    assert 'tm_bridge_delivered_total{bridge="b1",direction="nats_to_kafka"} 0' in text
    assert 'tm_bridge_up{bridge="b1",part="nats_to_kafka",side="kafka"} 0' in text
    assert 'tm_bridge_failed{bridge="b1",part="nats_to_kafka"} 0' in text


def test_one_process_for_both_directions_merges_to_its_own_status() -> None:
    one = _reply(BOTH)
    merged = status.merge([one])
    assert merged["health"] == one["health"]
    assert merged["kafka_to_nats"] == one["kafka_to_nats"]
    assert merged["nats_to_kafka"] == one["nats_to_kafka"]
    assert (merged["processes"], merged["serves"]) == (1, BOTH)


def test_two_parts_merge_each_direction_from_the_process_that_serves_it() -> None:
    k2n, n2k = _reply(["kafka_to_nats"]), _reply(["nats_to_kafka"])
    merged = status.merge([n2k, k2n])
    assert merged["kafka_to_nats"]["delivered"] == 10
    assert merged["nats_to_kafka"]["delivered"] == 20
    assert merged["health"] == {"status": "ok", "down": [], "kafka": "up", "nats": "up"}
    assert merged["cpu_s"] == pytest.approx(k2n["cpu_s"] + n2k["cpu_s"], abs=1e-5)
    assert (merged["processes"], merged["serves"]) == (2, BOTH)


def test_a_configured_direction_nobody_answers_for_is_degraded_and_named() -> None:
    merged = status.merge([_reply(["kafka_to_nats"])])
    assert merged["health"]["status"] == "degraded"
    assert merged["health"]["missing"] == ["nats_to_kafka"]
    assert "nats_to_kafka" not in merged


def test_a_config_with_one_direction_is_not_missing_the_other() -> None:
    merged = status.merge([_reply(["kafka_to_nats"], configured=["kafka_to_nats"])])
    assert merged["health"]["status"] == "ok"
    assert "missing" not in merged["health"]


def test_the_worst_health_wins_and_says_which_side_is_down() -> None:
    failed = _reply(["kafka_to_nats"], failure="kafka -> nats stopped: RuntimeError()")
    down = _reply(["nats_to_kafka"], kafka_up=False, kafka_detail="connection refused")
    merged = status.merge([down, failed])
    assert merged["health"]["status"] == "failed"
    assert merged["health"]["failure"] == "kafka -> nats stopped: RuntimeError()"
    assert merged["health"]["down"] == ["kafka"]
    assert merged["health"]["kafka"] == "down: connection refused"
    assert merged["health"]["nats"] == "up"
    assert status.merge([down, _reply(["kafka_to_nats"])])["health"]["status"] == "degraded"

from __future__ import annotations

import re
import uuid

import pytest

from mesh import config, ids
from mesh.catalog import BUILTIN, Domain, EventTypeSpec, Priority
from mesh.errors import ConfigError
from mesh.events import Event

SPEC = {
    "critical": [
        "RISK_LIMIT_BREACH",
        "MARGIN_CALL",
        "POSITION_LIMIT_EXCEEDED",
        "STOP_LOSS_TRIGGERED",
        "ORDER_REJECTED_CRITICAL",
        "ORDER_CANCELLED_SYSTEM",
    ],
    "high": [
        "ORDER_PLACED",
        "ORDER_FILLED",
        "ORDER_PARTIAL_FILL",
        "ORDER_CANCELLED",
        "PRICE_UPDATE",
        "VOLUME_UPDATE",
        "ORDER_BOOK_CHANGE",
        "TRADE_EXECUTION",
    ],
    "standard": [
        "POSITION_UPDATE",
        "PNL_CHANGE",
        "BALANCE_UPDATE",
        "MARGIN_UPDATE",
        "AGENT_STATUS_CHANGE",
        "TASK_COMPLETION",
        "PERFORMANCE_ALERT",
    ],
    "background": [
        "SERVICE_HEALTH_CHECK",
        "MAINTENANCE_NOTICE",
        "ANALYTICS_UPDATE",
        "USER_NOTIFICATION",
        "SYSTEM_ANNOUNCEMENT",
        "REPORT_GENERATED",
    ],
}


def test_every_specified_type_has_its_priority() -> None:
    for prio, names in SPEC.items():
        for name in names:
            assert BUILTIN.spec(name).priority == Priority(prio)
    assert len(BUILTIN.types) == sum(len(v) for v in SPEC.values())


def test_catalog_extends_by_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "mesh.toml"
    f.write_text(
        '[[catalog.domains]]\nname = "compliance"\npartition_by = "account"\n'
        '[[catalog.types]]\nname = "KYC_FLAG"\ndomain = "compliance"\npriority = "critical"\n'
    )
    cat = config.load(f, env={}).build_catalog()
    assert cat.spec("KYC_FLAG").priority is Priority.CRITICAL
    assert cat.spec("PRICE_UPDATE").domain == "market"


def test_rerouting_a_builtin_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="already"):
        BUILTIN.extended([EventTypeSpec("PRICE_UPDATE", "market", Priority.BACKGROUND)])
    with pytest.raises(ConfigError, match="not declared"):
        BUILTIN.extended([EventTypeSpec("X_EVENT", "nowhere", Priority.HIGH)])
    BUILTIN.extended([EventTypeSpec("X_EVENT", "x", Priority.HIGH)], [Domain("x", "symbol")])


def test_bad_config_is_reported_with_its_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "mesh.toml"
    f.write_text("[nats]\nport = 'many'\n")
    with pytest.raises(ConfigError, match=r"nats\.port"):
        config.load(f, env={})
    f.write_text("[natz]\n")
    with pytest.raises(ConfigError, match="natz"):
        config.load(f, env={})


def test_env_overrides_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = config.load(None, env={"MESH_NATS_URL": "nats://10.0.0.1:4222", "MESH_NATS_PORT": "5000"})
    assert cfg.nats.url == "nats://10.0.0.1:4222"
    assert cfg.nats.port == 5000


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    made = [ids.uuid7() for _ in range(20_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    u = uuid.UUID(made[0])
    assert u.version == 7
    assert re.fullmatch(r"[0-9a-f-]{36}", made[0])


def test_root_event_starts_its_own_correlation_and_children_keep_it() -> None:
    root = Event(event_type="ORDER_PLACED", symbol="AAPL", account="A1")
    assert root.correlation_id == root.event_id
    child = root.caused("ORDER_FILLED", symbol="AAPL", account="A1")
    grandchild = child.caused("POSITION_UPDATE", account="A1")
    assert child.correlation_id == grandchild.correlation_id == root.event_id
    assert child.causation_id == root.event_id
    assert grandchild.causation_id == child.event_id

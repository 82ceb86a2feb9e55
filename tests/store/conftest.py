"""Store test fixtures: one chDB path for the whole session (chDB allows one engine path
per process), a database of its own for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from store import db, schema
from store.config import StoreConfig


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store_cfg(chdb_path: Path, tag: str) -> StoreConfig:
    return StoreConfig(
        target=str(chdb_path),
        database=f"t_{tag.lower()}",
        batch_rows=500,
        batch_ms=50,
        durable_prefix=f"st-{tag.lower()}",
    )


@pytest.fixture
def client(store_cfg: StoreConfig) -> Iterator[Client]:
    c = db.connect(store_cfg.target)
    schema.migrate(c, store_cfg.database, store_cfg.ttl_days)
    yield c
    c.command(f"DROP DATABASE IF EXISTS {store_cfg.database}")
    c.close()

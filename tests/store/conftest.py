"""Store test fixtures: one chDB path for the whole session (chDB allows one engine path
per process), a database of its own for each test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from mesh.server import free_port
from store import db, schema
from store.config import StoreConfig
from store.endpoint import ReadOnlyEndpoint, serve


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


@pytest.fixture
async def endpoint(  # 5000 rows (AAPL, A1, corr-0..499) served read-only on this port
    store_cfg: StoreConfig, client: Client
) -> AsyncIterator[int]:
    client.command(
        f"INSERT INTO {store_cfg.database}.events (timestamp, event_id, event_type, domain, "
        "symbol, account, stream, seq, correlation_id) SELECT toUnixTimestamp64Nano(now64(9)) "
        "- 1000000000 + number, generateUUIDv7(), 'PRICE_UPDATE', 'market', 'AAPL', 'A1', "
        "'TM_HIGH', number + 1, concat('corr-', toString(intDiv(number, 10))) FROM numbers(5000)"
    )
    # what the sink writes to the account table for these rows
    client.command(schema.copy_accounts(store_cfg.database, "1"))
    port = free_port()
    cfg = StoreConfig(
        target=store_cfg.target,
        database=store_cfg.database,
        max_result_rows=3000,
        max_execution_time=1.0,
    )
    app = ReadOnlyEndpoint(lambda **kw: db.connect(cfg.target, **kw), cfg)
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, started))
    await started.wait()
    yield port
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    app.close()

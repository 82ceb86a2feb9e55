"""The auditor endpoint: clickhouse-connect (sync and async) and refusals, over real chDB."""

from __future__ import annotations

import asyncio
import datetime as dt
from uuid import UUID

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from store.config import StoreConfig


def http_client(port: int, password: str = "audit-dev") -> Client:
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, username="auditor", password=password
    )


async def test_sync_client_gets_typed_rows(endpoint: int, store_cfg: StoreConfig) -> None:
    c = await asyncio.to_thread(http_client, endpoint)
    r = await asyncio.to_thread(
        c.query,
        f"SELECT ts, event_id, seq, symbol FROM {store_cfg.database}.events "
        "WHERE seq <= {n:UInt64} ORDER BY seq",
        parameters={"n": 3},
    )
    assert len(r.result_rows) == 3
    ts, eid, seq, sym = r.result_rows[0]
    assert isinstance(ts, dt.datetime)
    assert isinstance(eid, UUID)
    assert (seq, sym) == (1, "AAPL")
    c.close()


async def test_async_client_gets_typed_rows(endpoint: int, store_cfg: StoreConfig) -> None:
    c = await clickhouse_connect.get_async_client(
        host="127.0.0.1", port=endpoint, username="auditor", password="audit-dev"
    )
    r = await c.query(f"SELECT count() AS n, max(seq) FROM {store_cfg.database}.events")
    assert r.result_rows == [(5000, 5000)]
    await c.close()


async def test_writes_and_ddl_refused_with_clickhouse_codes(
    endpoint: int, store_cfg: StoreConfig, client: Client
) -> None:
    c = await asyncio.to_thread(http_client, endpoint)
    for sql in (
        f"INSERT INTO {store_cfg.database}.events (seq) VALUES (1)",
        f"DROP TABLE {store_cfg.database}.events",
        f"ALTER TABLE {store_cfg.database}.events DELETE WHERE 1",
        "CREATE TABLE x (a Int8) ENGINE = Memory",
    ):
        with pytest.raises(DatabaseError) as e:
            await asyncio.to_thread(c.command, sql)
        assert "164" in str(e.value)
        assert "readonly" in str(e.value).lower()
    with pytest.raises(DatabaseError, match="164"):  # clickhouse-connect's own insert path
        await asyncio.to_thread(
            c.insert,
            f"{store_cfg.database}.events",
            [[1, "TM_HIGH"]],
            column_names=["seq", "stream"],
        )
    with pytest.raises(DatabaseError, match="497"):
        await asyncio.to_thread(c.query, "SELECT * FROM file('/etc/hostname', 'LineAsString')")
    with pytest.raises(DatabaseError, match="164"):
        await asyncio.to_thread(c.query, "SELECT 1 SETTINGS max_result_rows = 0")
    assert client.query(f"SELECT count() FROM {store_cfg.database}.events").result_rows == [(5000,)]
    with pytest.raises(DatabaseError, match="516"):
        await asyncio.to_thread(http_client, endpoint, "wrong")
    c.close()


async def test_queries_over_the_limits_are_stopped(endpoint: int, store_cfg: StoreConfig) -> None:
    c = await asyncio.to_thread(http_client, endpoint)
    with pytest.raises(DatabaseError) as e:
        await asyncio.to_thread(c.query, f"SELECT seq FROM {store_cfg.database}.events")
    assert "396" in str(e.value)
    assert "max rows: 3.00 thousand" in str(e.value)
    with pytest.raises(DatabaseError) as e:
        await asyncio.to_thread(c.query, "SELECT count() FROM numbers(100000000000)")
    assert "159" in str(e.value)
    assert "Timeout exceeded" in str(e.value)
    c.close()

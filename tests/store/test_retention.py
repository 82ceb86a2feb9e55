"""Retention: a shortened TTL drops whole expired day partitions and keeps the rest."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from store import schema
from store.config import StoreConfig


def partitions(client: Client, db: str) -> list[str]:
    rows = client.query(
        "SELECT DISTINCT partition FROM system.parts WHERE database = {d:String} "
        "AND table = 'events' AND active ORDER BY partition",
        parameters={"d": db},
    ).result_rows
    return [r[0] for r in rows]


def test_short_ttl_drops_expired_partitions(client: Client, store_cfg: StoreConfig) -> None:
    db = store_cfg.database
    for days_ago in (3, 0):
        client.command(
            f"INSERT INTO {db}.events (timestamp, event_id, event_type, domain, stream, seq) "
            f"SELECT toUnixTimestamp64Nano(now64(9)) - {days_ago} * 86400000000000 + number, "
            f"generateUUIDv7(), 'PRICE_UPDATE', 'market', 'TM_HIGH', number FROM numbers(100)"
        )
    before = partitions(client, db)
    assert len(before) == 2
    schema.set_ttl(client, db, ttl_days=1)  # retention shortened from 30 days to 1
    assert len(schema.drop_expired(client, db, ttl_days=1)) == 1
    assert partitions(client, db) == before[1:]
    assert client.query(f"SELECT count() FROM {db}.events").result_rows == [(100,)]

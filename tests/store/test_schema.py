"""Migrations: a database made by an older version is upgraded in place, rows kept."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from store import db, schema
from store.config import StoreConfig


def test_v2_database_upgrades_to_string_columns_and_an_account_table(
    store_cfg: StoreConfig,
) -> None:
    c: Client = db.connect(store_cfg.target)
    d = store_cfg.database
    try:
        c.command(f"CREATE DATABASE {d}")
        c.command(
            f"CREATE TABLE {d}.schema_migrations (version UInt32, applied_at DateTime "
            "DEFAULT now()) ENGINE = MergeTree ORDER BY version"
        )
        for version, step in enumerate(schema.MIGRATIONS[:2], start=1):  # as v2 left it
            for sql in step(d, schema.ttl_seconds(30)):
                c.command(sql)
            c.command(f"INSERT INTO {d}.schema_migrations (version) VALUES ({version})")
        c.command(
            f"INSERT INTO {d}.events (timestamp, event_id, event_type, domain, symbol, account, "
            "stream, seq) SELECT toUnixTimestamp64Nano(now64(9)) + number, generateUUIDv7(), "
            "'ORDER_PLACED', 'order', 'AAPL', if(number % 2 = 0, 'A1', ''), 'TM_HIGH', "
            "number + 1 FROM numbers(10)"
        )
        assert schema.migrate(c, d, 30) == len(schema.MIGRATIONS)
        types = dict(
            c.query(
                "SELECT name, type FROM system.columns WHERE database = {d:String} "
                "AND table = 'events'",
                parameters={"d": d},
            ).result_rows
        )
        assert [n for n, t in types.items() if "LowCardinality" in t] == []
        assert c.query(f"SELECT count() FROM {d}.events").result_rows == [(10,)]
        copied = c.query(f"SELECT seq FROM {d}.events_by_account ORDER BY seq").result_rows
        assert copied == [(1,), (3,), (5,), (7,), (9,)]
        assert schema.migrate(c, d, 30) == len(schema.MIGRATIONS)  # again: nothing to do
        assert c.query(f"SELECT count() FROM {d}.events_by_account").result_rows == [(5,)]
    finally:
        c.command(f"DROP DATABASE IF EXISTS {d}")
        c.close()

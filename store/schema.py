"""The audit table and its migrations, applied by the store itself at start.

Layout, chosen for the audit queries (docs/store.md has the measurements):
* one row per stored event; columns named like `mesh.events.Event` fields so the sink can
  hand the wire JSON straight to ClickHouse (JSONEachRow) with only `stream`, `seq` and
  `domain` spliced in;
* `PARTITION BY toDate(ts)`: day partitions, so retention drops whole parts
  (`ttl_only_drop_parts`) and day/hour queries prune partitions;
* `ORDER BY (symbol, ts)`: per-symbol time ranges (and replay in per-symbol order) read a
  contiguous range of the primary index;
* bloom-filter skip indexes on correlation_id and event_id (v1 had one on account too,
  dropped in v3): point lookups that the sort key cannot serve skip granules instead of
  scanning the day;
* a second table, `events_by_account` (v3), with the rows that carry an account sorted by
  (account, ts): the account+day query reads one range there (the sink writes both; see
  sink.py for why they stay equal);
* plain String columns: v1 had LowCardinality for type, domain, priority, tenant, source,
  stream and symbol; v3 dropped it (it was ~40 % of ClickHouse's insert CPU);
* `non_replicated_deduplication_window`: MergeTree remembers the last N insert tokens, so
  a retried insert with the same `insert_deduplication_token` is a no-op (see sink.py).
"""

from __future__ import annotations

from collections.abc import Callable

from clickhouse_connect.driver.client import Client

TABLE = "events"
# The same rows for events that carry an account, sorted by account: "what happened on
# this account that day" reads one contiguous range here, where the main table (sorted by
# symbol) has an account's events spread over every granule of the day.
ACCOUNT_TABLE = "events_by_account"
TABLES = (TABLE, ACCOUNT_TABLE)
# Were LowCardinality in v1; v3 made them String (see _v3).
_V1_LOW_CARDINALITY = {
    "event_type": "",
    "domain": "",
    "priority": " DEFAULT ''",
    "symbol": " DEFAULT ''",
    "tenant": " DEFAULT ''",
    "source": " DEFAULT ''",
    "stream": "",
}
DEDUP_WINDOW = 10_000  # insert tokens remembered; far more than batches in flight


def _v1(db: str, ttl_seconds: int) -> list[str]:
    return [
        f"""
CREATE TABLE IF NOT EXISTS {db}.{TABLE}
(
    timestamp      Int64,
    ts             DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(timestamp, 'UTC'),
    event_id       UUID,
    event_type     LowCardinality(String),
    domain         LowCardinality(String),
    priority       LowCardinality(String) DEFAULT '',
    symbol         LowCardinality(String) DEFAULT '',
    account        String DEFAULT '',
    tenant         LowCardinality(String) DEFAULT '',
    correlation_id String DEFAULT '',
    causation_id   String DEFAULT '',
    source         LowCardinality(String) DEFAULT '',
    version        UInt16 DEFAULT 1,
    payload        String DEFAULT '{{}}' CODEC(ZSTD(3)),
    stream         LowCardinality(String),
    seq            UInt64,
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX ix_correlation correlation_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX ix_account account TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX ix_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX ix_type event_type TYPE set(256) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (symbol, ts)
TTL toDateTime(ts) + toIntervalSecond({ttl_seconds})
SETTINGS ttl_only_drop_parts = 1,
         merge_with_ttl_timeout = 3600,
         non_replicated_deduplication_window = {DEDUP_WINDOW}
"""
    ]


def _v2(db: str, ttl_seconds: int) -> list[str]:
    # The correlation lookup has no time range, so over 30 days the bloom filter alone
    # still reads every day's index: a lightweight projection (row positions sorted by
    # correlation id) finds the rows through a sorted key instead. New parts get it; parts
    # written before this migration use the bloom filter.
    # Tried and not kept (docs/store.md, Figures): a full projection sorted by
    # (account, ts) halves account+day lookups but, at 10M rows, the planner then chose it
    # for correlation lookups too (p50 15 -> 135-231 ms), and it costs ~80 % more disk.
    return [
        f"ALTER TABLE {db}.{TABLE} ADD PROJECTION IF NOT EXISTS p_correlation "
        "(SELECT _part_offset ORDER BY correlation_id)",
    ]


def _v3(db: str, ttl_seconds: int) -> list[str]:
    # LowCardinality cost more than it gave here: parsing JSONEachRow into the seven
    # LowCardinality columns was ~3 of the ~7 us of ClickHouse CPU per ingested row, and
    # none of the audit queries got faster with it (docs/store.md, Figures).
    alters = [
        f"ALTER TABLE {db}.{TABLE} MODIFY COLUMN {col} String{default}"
        for col, default in _V1_LOW_CARDINALITY.items()
    ]
    return [
        *alters,
        # account lookups read the account table now; the bloom filter only cost inserts
        f"ALTER TABLE {db}.{TABLE} DROP INDEX IF EXISTS ix_account",
        f"""
CREATE TABLE IF NOT EXISTS {db}.{ACCOUNT_TABLE}
(
    timestamp      Int64,
    ts             DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(timestamp, 'UTC'),
    event_id       UUID,
    event_type     String,
    domain         String,
    priority       String DEFAULT '',
    symbol         String DEFAULT '',
    account        String,
    tenant         String DEFAULT '',
    correlation_id String DEFAULT '',
    causation_id   String DEFAULT '',
    source         String DEFAULT '',
    version        UInt16 DEFAULT 1,
    payload        String DEFAULT '{{}}' CODEC(ZSTD(3)),
    stream         String,
    seq            UInt64,
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (account, ts)
TTL toDateTime(ts) + toIntervalSecond({ttl_seconds})
SETTINGS ttl_only_drop_parts = 1,
         merge_with_ttl_timeout = 3600,
         non_replicated_deduplication_window = {DEDUP_WINDOW}
""",
        # rows stored before this migration
        copy_accounts(db, "1"),
    ]


# Stored columns, in table order (`ts` is computed from `timestamp` in both tables).
COLUMNS = (
    "timestamp, event_id, event_type, domain, priority, symbol, account, tenant, "
    "correlation_id, causation_id, source, version, payload, stream, seq, ingested_at"
)


def copy_accounts(db: str, where: str) -> str:
    """SQL that copies the main table's rows with an account (and `where`) to the account
    table: the v3 backfill, and the sink's repair after a crash between its two inserts."""
    return (
        f"INSERT INTO {db}.{ACCOUNT_TABLE} ({COLUMNS}) SELECT {COLUMNS} FROM {db}.{TABLE} "
        f"WHERE account != '' AND {where} ORDER BY seq"
    )


# Append only: a migration, once released, never changes; its index is its version.
MIGRATIONS: list[Callable[[str, int], list[str]]] = [_v1, _v2, _v3]


def ttl_seconds(ttl_days: float) -> int:
    return max(1, round(ttl_days * 86400))


def migrate(client: Client, db: str, ttl_days: float) -> int:
    """Create or upgrade the schema; return its version. Safe to run at every start."""
    ttl = ttl_seconds(ttl_days)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    done = client.query(f"SELECT max(version) FROM {db}.schema_migrations").result_rows
    current = int(done[0][0] or 0) if done else 0
    for version, step in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        for sql in step(db, ttl):
            client.command(sql)
        client.command(f"INSERT INTO {db}.schema_migrations (version) VALUES ({version})")
        current = version
    set_ttl(client, db, ttl_days)
    return current


def set_ttl(client: Client, db: str, ttl_days: float) -> None:
    """Apply the configured retention if it changed (metadata only, no rewrite of parts)."""
    ttl = ttl_seconds(ttl_days)
    for table in TABLES:
        create = str(client.command(f"SHOW CREATE TABLE {db}.{table}"))
        if f"toIntervalSecond({ttl})" not in create:
            client.command(
                f"ALTER TABLE {db}.{table} MODIFY TTL toDateTime(ts) + toIntervalSecond({ttl}) "
                "SETTINGS materialize_ttl_after_modify = 0"
            )


def drop_expired(client: Client, db: str, ttl_days: float) -> list[str]:
    """Drop now the day partitions whose newest row is past retention; return their ids
    (of the main table; the account table drops the same days).

    Background TTL merges do the same within merge_with_ttl_timeout (whole parts, thanks to
    ttl_only_drop_parts); this is for operators and tests that do not want to wait."""
    dropped: dict[str, list[str]] = {}
    for table in TABLES:
        rows = client.query(
            "SELECT partition_id FROM system.parts WHERE database = {d:String} "
            "AND table = {t:String} AND active GROUP BY partition_id "
            "HAVING max(max_time) < now() - {s:UInt64}",
            parameters={"d": db, "t": table, "s": ttl_seconds(ttl_days)},
        ).result_rows
        dropped[table] = [str(r[0]) for r in rows]
        for pid in dropped[table]:
            client.command(f"ALTER TABLE {db}.{table} DROP PARTITION ID '{pid}'")
    return dropped[TABLE]

"""Named audit queries: SQL + parameters, the same for chDB and a ClickHouse server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from store.schema import ACCOUNT_TABLE, TABLE

COLUMNS = (
    "ts, event_type, symbol, account, toString(event_id) AS event_id, correlation_id, "
    "causation_id, stream, seq, payload"
)
Query = tuple[str, dict[str, Any]]


def _t(x: float | datetime) -> datetime:
    return x if isinstance(x, datetime) else datetime.fromtimestamp(x, UTC)


def _range(
    db: str,
    where: str,
    since: float | datetime,
    until: float | datetime,
    limit: int,
    table: str = TABLE,
    **params: Any,
) -> Query:
    sql = (
        f"SELECT {COLUMNS} FROM {db}.{table} WHERE {where} AND ts >= {{since:DateTime64(9)}} "
        f"AND ts < {{until:DateTime64(9)}} ORDER BY ts, stream, seq LIMIT {int(limit)}"
    )
    return sql, {"since": _t(since), "until": _t(until), **params}


def by_correlation(db: str, correlation_id: str, limit: int = 10_000) -> Query:
    return (
        f"SELECT {COLUMNS} FROM {db}.{TABLE} WHERE correlation_id = {{c:String}} "
        f"ORDER BY ts, stream, seq LIMIT {int(limit)}",
        {"c": correlation_id},
    )


def by_account(
    db: str, account: str, since: float | datetime, until: float | datetime, limit: int = 10_000
) -> Query:
    # the account table: sorted by (account, ts), so this reads one range
    return _range(db, "account = {a:String}", since, until, limit, ACCOUNT_TABLE, a=account)


def by_symbol(
    db: str, symbol: str, since: float | datetime, until: float | datetime, limit: int = 10_000
) -> Query:
    return _range(db, "symbol = {s:String}", since, until, limit, s=symbol)


def by_type(
    db: str, event_type: str, since: float | datetime, until: float | datetime, limit: int = 10_000
) -> Query:
    return _range(db, "event_type = {e:String}", since, until, limit, e=event_type)


def time_range(
    db: str, since: float | datetime, until: float | datetime, limit: int = 10_000
) -> Query:
    return _range(db, "1", since, until, limit)

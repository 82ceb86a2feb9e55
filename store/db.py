"""The one way the store reaches ClickHouse: a clickhouse-connect client.

A path selects clickhouse-connect's built-in chDB interface (in-process engine, one
owning process per path); an http(s):// URL selects a ClickHouse server. Same SQL either
way."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from store.config import is_server
from store.errors import StoreLocked, StoreUnavailable


def connect(target: str, *, database: str | None = None, **settings: object) -> Client:
    """A client on `target` (a chDB directory or an http(s) URL with optional user:pass@)."""
    try:
        if is_server(target):
            u = urlparse(target)
            return clickhouse_connect.get_client(
                interface=u.scheme,
                host=u.hostname or "127.0.0.1",
                port=u.port or (8443 if u.scheme == "https" else 8123),
                username=unquote(u.username or "default"),
                password=unquote(u.password or ""),
                database=database or "",
                settings=dict(settings),
                connect_timeout=3,
                send_receive_timeout=30,
            )
        os.makedirs(target, exist_ok=True)
        return clickhouse_connect.get_client(
            interface="chdb", path=target, database=database, settings=dict(settings)
        )
    except ClickHouseError as e:
        if "lock" in str(e).lower():
            raise StoreLocked(
                f"chDB path {target} is in use by another process: query it through that "
                f"process's auditor endpoint (`mesh audit --endpoint URL`)"
            ) from e
        raise StoreUnavailable(f"cannot reach ClickHouse at {target}: {e}") from e
    except OSError as e:
        raise StoreUnavailable(f"cannot use ClickHouse at {target}: {e}") from e

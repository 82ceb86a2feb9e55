"""Store settings: where the data lives, how the sink batches, what auditors may do.

Defaults here, overridden by `mesh store` flags (`mesh store --help`). (mesh.toml's
MeshConfig forbids unknown tables, so there is no `[store]` section yet.)"""

from __future__ import annotations

import msgspec


class StoreConfig(msgspec.Struct, kw_only=True):
    # A directory selects embedded chDB (one owning process); an http(s):// URL a server.
    target: str = "data/audit"
    database: str = "audit"
    ttl_days: float = 30.0  # retention; whole day-partitions are dropped once expired
    # an insert is cut at this many rows ... (large: every insert is a part that background
    # merges rewrite later; 100k-row parts cost ClickHouse ~3 us/row against ~5-6 at 20k)
    batch_rows: int = 100_000
    batch_ms: int = 200  # ... or this long after its first row, whichever comes first
    durable_prefix: str = "tm-store"  # durable consumer name = prefix + "-" + stream
    # auditor endpoint
    http_host: str = "127.0.0.1"
    http_port: int = 8124
    auditors: dict[str, str] = msgspec.field(default_factory=lambda: {"auditor": "audit-dev"})
    max_execution_time: float = 10.0  # seconds per query
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 512 * 1024 * 1024


def is_server(target: str) -> bool:
    return target.startswith(("http://", "https://"))

"""`mesh audit` and `mesh replay --dry-run` end to end, through the auditor endpoint."""

from __future__ import annotations

import json

from mesh.server import NatsServer
from store.config import StoreConfig
from tests.helpers import mesh_command


async def mesh_cmd(*argv: str) -> tuple[int, str, str]:
    return await mesh_command(*argv)


async def test_audit_named_queries_and_chain(endpoint: int, store_cfg: StoreConfig) -> None:
    src = [
        "--endpoint",
        f"http://auditor:audit-dev@127.0.0.1:{endpoint}",
        "--database",
        store_cfg.database,
    ]
    rc, out, _ = await mesh_cmd("audit", "correlation", "corr-3", "--json", *src)
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in rows] == list(range(31, 41))
    rc, out, err = await mesh_cmd("audit", "account", "A1", "--since", "1h", "--limit", "7", *src)
    assert rc == 0
    assert len(out.splitlines()) == 8  # header + 7 rows
    assert "(7 rows)" in err
    rc, out, _ = await mesh_cmd("audit", "chain", "corr-0", *src)
    assert rc == 0
    assert out.count("PRICE_UPDATE AAPL A1") == 10
    rc, _, err = await mesh_cmd("audit", "sql", f"DROP TABLE {store_cfg.database}.events", *src)
    assert rc == 2
    assert "Code: 164" in err


async def test_replay_dry_run_counts_from_the_store(
    endpoint: int, store_cfg: StoreConfig, nats_server: NatsServer
) -> None:
    rc, _, err = await mesh_cmd(
        "--url",
        nats_server.url,
        "replay",
        "--source",
        "store",
        "--since",
        "1h",
        "--symbol",
        "AAPL",
        "--dry-run",
        "--quiet",
        "--endpoint",
        f"http://auditor:audit-dev@127.0.0.1:{endpoint}",
        "--database",
        store_cfg.database,
    )
    assert rc == 0, err
    assert "would replay 5000 events from store" in err

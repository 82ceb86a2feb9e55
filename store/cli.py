"""This part's `mesh` sub-commands (wired in by node/cli.py): `mesh store` (sink +
auditor endpoint), `mesh audit` (named queries, chains), `mesh replay`, `mesh bench store`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from mesh import config
from mesh.cli import SubParsers


def _nats(args: argparse.Namespace, cfg: config.MeshConfig) -> tuple[str, str, str]:
    url = str(args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}")
    user = args.user or cfg.nats.user
    password = args.password if args.user else cfg.nats.password
    return url, user, password


async def cmd_store(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from store import service

    host, _, port = (args.http or "127.0.0.1:8124").rpartition(":")
    scfg = service.config_from(
        {
            "target": args.target,
            "database": args.database,
            "ttl_days": args.ttl_days,
            "batch_rows": args.batch_rows,
            "batch_ms": args.batch_ms,
            "http_host": host or "127.0.0.1",
            "http_port": int(port),
            "max_execution_time": args.max_execution_time,
            "max_result_rows": args.max_result_rows,
        }
    )
    if args.auditor:
        user, _, pw = args.auditor.partition(":")
        scfg.auditors = {user: pw}
    url, user, password = _nats(args, cfg)
    with contextlib.suppress(asyncio.CancelledError):
        await service.run(scfg, url, user, password, http=not args.no_http)
    return 0


def register(commands: SubParsers, benches: SubParsers) -> None:
    """Add this part's commands to `commands` and its benchmark to `benches`
    (`mesh bench <name>`); each parser sets `fn=async (args, cfg) -> int`."""
    st = commands.add_parser("store", help="audit store: JetStream sink + auditor endpoint")
    st.add_argument("--target", help="chDB directory (default data/audit) or http(s):// URL")
    st.add_argument("--database", help="database name (default audit)")
    st.add_argument("--ttl-days", type=float, help="retention in days (default 30)")
    st.add_argument("--batch-rows", type=int, help="rows per insert at most (default 100000)")
    st.add_argument("--batch-ms", type=int, help="ms after a batch's first row (default 200)")
    st.add_argument("--http", help="auditor endpoint host:port (default 127.0.0.1:8124)")
    st.add_argument("--no-http", action="store_true", help="sink only, no auditor endpoint")
    st.add_argument("--auditor", help="user:password accepted by the endpoint")
    st.add_argument("--max-execution-time", type=float, help="seconds per query (default 10)")
    st.add_argument("--max-result-rows", type=int, help="rows per result (default 1000000)")
    st.set_defaults(fn=cmd_store)
    from store import cli_audit

    cli_audit.register(commands)
    b = benches.add_parser("store", help="ingest rate, publish->row lag, audit query latency")
    from store import bench

    bench.add_args(b)
    b.set_defaults(fn=cmd_bench)


async def cmd_bench(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from store import bench

    return await bench.main(args)

"""The store process: schema migration, the sink, and the auditor endpoint, together.

It owns the chDB path (one process per path); everything else reaches the data through
its endpoint."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from clickhouse_connect.driver.client import Client
from nats.aio.client import Client as Nats

from mesh import lag
from store import db, schema
from store.config import StoreConfig
from store.endpoint import ReadOnlyEndpoint, serve
from store.puller import connect as connect_nats
from store.sink import Sink

log = logging.getLogger("store")


def connector(cfg: StoreConfig) -> functools.partial[Client]:
    return functools.partial(db.connect, cfg.target)


def prometheus(sink: Sink) -> str:
    lines = []
    held = sink.held()
    for s in sink.stats():
        lbl = f'{{stream="{s.stream}"}}'
        lines += [
            f"mesh_store_rows_total{lbl} {s.rows}",
            f"mesh_store_batches_total{lbl} {s.batches}",
            f"mesh_store_committed_seq{lbl} {s.committed_seq}",
            f"mesh_store_delivered_seq{lbl} {s.delivered_seq}",
            f"mesh_store_held_events{lbl} {held[s.stream]}",
            f"mesh_store_resubscribes_total{lbl} {s.resubscribes}",
            f"mesh_store_insert_failures_total{lbl} {s.insert_failures}",
            f"mesh_store_malformed_dropped_total{lbl} {s.malformed_dropped}",
            f"mesh_store_last_insert_ms{lbl} {s.last_insert_ms:.1f}",
        ]
    return "\n".join(lines) + "\n"


async def run(
    cfg: StoreConfig,
    nats_url: str,
    user: str,
    password: str,
    *,
    http: bool = True,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until cancelled."""
    connect = connector(cfg)
    setup = await asyncio.to_thread(connect)
    version = await asyncio.to_thread(schema.migrate, setup, cfg.database, cfg.ttl_days)
    log.info("schema %s at version %d on %s", cfg.database, version, cfg.target)
    nc = await connect_nats(nats_url, user, password)
    sink = Sink(nc, connect, cfg)
    endpoint = ReadOnlyEndpoint(connect, cfg) if http else None
    lag_sub = await serve_lag(nc, sink, cfg)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sink.run())
            if endpoint is not None:
                endpoint.metrics = functools.partial(prometheus, sink)
                started = asyncio.Event()
                tg.create_task(serve(endpoint, cfg.http_host, cfg.http_port, started))
                await started.wait()
            print(
                f"store: {cfg.target} db {cfg.database} schema v{version}"
                + (f", auditors on http://{cfg.http_host}:{cfg.http_port}" if http else ""),
                flush=True,
            )
            if ready is not None:
                ready.set()
    finally:
        if endpoint is not None:
            endpoint.close()
        await lag_sub.unsubscribe()
        await nc.close()


async def serve_lag(nc: Nats, sink: Sink, cfg: StoreConfig) -> Any:
    """Answer `mesh streams` with what the sink holds but has not inserted: its consumers
    take no acks (sink.py, 2), so JetStream's pending counts stop at delivery."""

    async def report() -> dict[str, int]:
        return sink.held()

    return await lag.serve(nc, f"store {cfg.target} (taken, not yet in the table)", report)


def config_from(overrides: dict[str, Any], base: StoreConfig | None = None) -> StoreConfig:
    import msgspec

    data = msgspec.to_builtins(base or StoreConfig())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(data, StoreConfig)

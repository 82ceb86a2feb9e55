"""A store sink running in the test's own process, against a real nats-server and chDB."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from clickhouse_connect.driver.client import Client

from mesh.client import connect_nats
from store import db
from store.config import StoreConfig
from store.sink import STREAMS, Sink


@contextlib.asynccontextmanager
async def running_sink(
    url: str,
    cfg: StoreConfig,
    streams: tuple[str, ...] = STREAMS,
    connect: Callable[[], Client] | None = None,
) -> AsyncIterator[Sink]:
    """The sink's `run()` as a task on its own NATS connection (`sink.sinks[0].nc`),
    stopped and disconnected on the way out."""
    nc = await connect_nats(url)
    sink = Sink(nc, connect or (lambda: db.connect(cfg.target)), cfg, streams=streams)
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()

"""Replay of a time range from the store reproduces the events in per-symbol order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from mesh.client import Mesh
from mesh.events import Event, decode
from mesh.server import NatsServer
from store import replay
from store.config import StoreConfig
from tests.helpers import eventually
from tests.store.running import running_sink


async def test_replay_time_range_keeps_per_symbol_order(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    symbols = [f"{tag}{k}" for k in range(3)]
    sent = [
        Event(event_type=t, symbol=symbols[i % 3], payload={"i": i})
        for i in range(600)
        for t in ("PRICE_UPDATE",)
    ]
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        await mesh.publish_many(sent)
        async with running_sink(fresh_server.url, store_cfg):
            q = f"SELECT count() FROM {store_cfg.database}.events"
            await eventually(lambda: client.query(q).result_rows[0][0] == 600, 30, "600 rows")

        got: list[Event] = []
        done = asyncio.Event()

        async def on_msg(msg: object) -> None:
            got.append(decode(msg.data))  # type: ignore[attr-defined]
            if len(got) == 600:
                done.set()

        sub = await mesh.nc.subscribe("replay.>", cb=on_msg)
        until = datetime.now(UTC) + timedelta(seconds=1)
        found = replay.events(client, store_cfg.database, since, until)
        n = await replay.replay(mesh, found, prefix="replay")
        await asyncio.wait_for(done.wait(), 10)
        await sub.unsubscribe()
    assert n == 600
    for s in symbols:
        assert [e.event_id for e in got if e.symbol == s] == [
            e.event_id for e in sent if e.symbol == s
        ]
    assert {e.event_id: e for e in got}[sent[5].event_id] == sent[5]

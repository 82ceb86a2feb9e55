"""Many connect/subscribe/disconnect cycles leave no shared subscription, no JetStream
consumer and no session behind, and memory stays within a stated bound.

Count: 3,000 cycles (20 clients at a time), which fits the suite's time budget on this
2-core machine; `mesh bench gateway --clients 10000` exercises more at once. Each cycle
subscribes to a symbol of its own, so it creates and removes a JetStream consumer, plus
the shared `prices` channel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from websockets.asyncio.client import connect

from mesh import jsapi
from mesh.client import Mesh
from mesh.server import NatsServer
from tests.gateway.conftest import Keys, start_gateway
from tests.gateway.test_queues import scrape

CYCLES = 3_000
PARALLEL = 20
RSS_BOUND_MB = 25.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_connect_disconnect_cycles_leak_nothing(
    nats_server: NatsServer, gw_config: Path, keys: Keys, mesh: Mesh, tag: str
) -> None:
    g = start_gateway(nats_server.url, gw_config)
    token = keys.token(account=tag)
    headers = {"Authorization": f"Bearer {token}"}
    consumers_before = (await jsapi.stream_info(mesh.nc, "TM_HIGH"))["state"]["consumer_count"]

    async def cycle(i: int) -> None:
        async with connect(g.url, additional_headers=headers) as ws:
            await ws.recv()
            await ws.send(json.dumps({"op": "subscribe", "id": "a", "channel": "prices",
                                      "symbol": f"{tag}{i}"}))
            await ws.send(json.dumps({"op": "subscribe", "id": "b", "channel": "prices"}))
            got = 0
            while got < 2:
                f = json.loads(await ws.recv())
                got += f.get("state") == "subscribed"

    async def run(lo: int, hi: int) -> None:
        sem = asyncio.Semaphore(PARALLEL)

        async def one(i: int) -> None:
            async with sem:
                await cycle(i)

        await asyncio.gather(*(one(i) for i in range(lo, hi)))

    try:
        await run(0, 300)  # warm-up: allocator pools, caches, imports
        base = rss_mb(g.proc.pid)
        await run(300, CYCLES)

        async def settled() -> dict[str, float]:
            while True:
                m = await asyncio.to_thread(scrape, g)
                if m.get("gateway_connections") == 0 and m.get(
                        "gateway_shared_subscriptions") == 0:
                    return m
                await asyncio.sleep(0.05)  # polling a gauge: nothing announces it

        m = await asyncio.wait_for(settled(), 30)
        assert m["gateway_connections_total"] == CYCLES
        info = await jsapi.stream_info(mesh.nc, "TM_HIGH")
        assert info["state"]["consumer_count"] <= consumers_before
        grown = rss_mb(g.proc.pid) - base
        assert grown < RSS_BOUND_MB, f"RSS grew {grown:.1f} MB over {CYCLES - 300} cycles"
    finally:
        g.stop()

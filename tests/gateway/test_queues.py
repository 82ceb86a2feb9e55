"""Per-session priority queues: critical overtakes queued market data; a stalled client
gets market data conflated while a fast one gets every tick."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from websockets.asyncio.client import connect

from mesh.client import Mesh
from mesh.events import Event
from tests.gateway.conftest import GatewayProc, Keys, events_of, recv_json, recv_until
from tests.gateway.rawclient import RawWs

PAD = "x" * 1000  # big events fill socket buffers fast, so the gateway's queue holds the rest


async def slow_client(gateway: GatewayProc, token: str) -> RawWs:
    """A client that reads nothing until told (see rawclient.py for why not `websockets`)."""
    return await RawWs.open(gateway.port, token)


def scrape(gateway: GatewayProc) -> dict[str, float]:
    text = urllib.request.urlopen(gateway.http + "/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


async def metric(gateway: GatewayProc, name: str) -> float:
    return (await asyncio.to_thread(scrape, gateway)).get(name, 0.0)


async def wait_metric(gateway: GatewayProc, name: str, at_least: float, timeout: float) -> None:
    latest = [0.0]

    async def poll() -> None:
        while (v := await metric(gateway, name)) < at_least:
            latest[0] = v
            await asyncio.sleep(0.05)  # polling an HTTP gauge: no event announces it

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"{name} stayed at {latest[0]} < {at_least}") from None


async def test_critical_overtakes_10000_queued_market_events(
    gateway: GatewayProc, keys: Keys, mesh: Mesh, tag: str
) -> None:
    ws = await slow_client(gateway, keys.token(roles=["trader", "risk_officer"], account=tag))
    await ws.recv()
    await ws.send(json.dumps({"op": "subscribe", "id": "m", "domain": "market",
                              "account": tag}))
    await ws.recv()
    await ws.send(json.dumps({"op": "subscribe", "id": "r", "domain": "risk", "account": tag}))
    await ws.recv()
    n = 10_000
    await mesh.publish_many([
        Event(event_type="PRICE_UPDATE", symbol=f"S{i}", account=tag,
              payload={"i": i, "pad": PAD}) for i in range(n)
    ])
    # The client reads nothing: most of the 10,000 wait in the gateway's queue.
    await wait_metric(gateway, 'gateway_queue_depth{priority="market"}', 5_000, 30)
    await mesh.publish(Event(event_type="MARGIN_CALL", account=tag, payload={"x": 1}))
    order: list[str] = []
    while len(order) < n + 1:
        for e in events_of(await ws.recv(30)):
            order.append(e["event"]["event_type"])
    at = order.index("MARGIN_CALL")
    behind = n - at  # market events still queued when the critical one went out
    assert behind >= 5_000, f"critical went out after {at} of {n} market events"
    assert order.count("PRICE_UPDATE") == n  # distinct symbols: nothing conflated away
    await ws.close()


async def test_stalled_client_conflated_fast_client_gets_every_tick(
    gateway: GatewayProc, keys: Keys, mesh: Mesh, tag: str
) -> None:
    token = keys.token(account=tag)
    sub = {"op": "subscribe", "id": "p", "channel": "prices"}
    symbols = [f"{tag}{k}" for k in range(5)]
    slow = await slow_client(gateway, token)
    await slow.recv()
    fast = await connect(gateway.url, additional_headers={"Authorization": f"Bearer {token}"},
                         max_size=None)
    await recv_json(fast)
    filt = {"field": "symbol", "op": "in", "value": symbols}
    await slow.send(json.dumps({**sub, "filter": filt}))
    assert (await slow.recv())["state"] == "subscribed"
    await fast.send(json.dumps({**sub, "filter": filt}))
    await recv_until(fast, lambda f: f.get("id") == "p")
    n = 5_000
    conflated_before = await metric(gateway, "gateway_conflated_total")
    got_fast: list[dict] = []

    async def read_fast() -> None:
        while len(got_fast) < n:
            f = json.loads(await fast.recv())
            got_fast.extend(events_of(f))
            if f.get("type") == "ping":
                await fast.send('{"op":"pong"}')

    reader = asyncio.create_task(read_fast())
    # A steady 2,000 ticks/s: the fast client keeps up, the stalled one cannot.
    for start in range(0, n, 100):
        await mesh.publish_many([
            Event(event_type="PRICE_UPDATE", symbol=symbols[i % 5],
                  payload={"n": i, "pad": PAD})
            for i in range(start, start + 100)
        ])
        await asyncio.sleep(0.05)  # pacing the load, not synchronisation
    try:
        await asyncio.wait_for(reader, 60)
    except TimeoutError:
        raise AssertionError(f"fast client got {len(got_fast)} of {n}") from None
    assert [e["event"]["payload"]["n"] for e in got_fast] == list(range(n))
    assert not any(e.get("conflated") for e in got_fast)
    await wait_metric(gateway, "gateway_conflated_total", conflated_before + 1, 30)
    # Now the stalled client reads: fewer events, the latest per symbol last, some marked.
    last = {s: max(i for i in range(n) if symbols[i % 5] == s) for s in symbols}
    got_slow: list[dict] = []
    latest: dict[str, int] = {}
    while latest != last:
        for e in events_of(await slow.recv(30)):
            got_slow.append(e)
            latest[e["event"]["symbol"]] = e["event"]["payload"]["n"]
    assert len(got_slow) < n
    assert any(e.get("conflated") for e in got_slow)
    seqs = [e["seq"] for e in got_slow]
    assert seqs == sorted(set(seqs)), "stream order kept, no duplicates"
    await slow.close()
    await fast.close()

"""Resume: a client reconnecting to another gateway instance with its last sequences gets
what it missed from JetStream, then live events, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer
from tests.gateway.conftest import GatewayProc, Keys, events_of, recv_until, start_gateway


@pytest.fixture
def two_gateways(nats_server: NatsServer, gw_config: Path) -> Iterator[tuple[GatewayProc, ...]]:
    a = start_gateway(nats_server.url, gw_config)
    b = start_gateway(nats_server.url, gw_config)
    yield a, b
    a.stop()
    b.stop()


async def _open(g: GatewayProc, token: str) -> ClientConnection:
    return await connect(g.url, additional_headers={"Authorization": f"Bearer {token}"},
                         max_size=None)


async def _orders(
    g: GatewayProc, token: str, resume: dict[str, int] | None = None
) -> ClientConnection:
    """A connection subscribed to the "orders" channel, from `resume` positions if given."""
    ws = await _open(g, token)
    frame: dict[str, object] = {"op": "subscribe", "id": "o", "channel": "orders"}
    if resume is not None:
        frame["resume"] = resume
    await ws.send(json.dumps(frame))
    return ws


async def _collect(ws: ClientConnection, seen: dict[int, int], want: int,
                   statuses: list[dict] | None = None) -> None:
    """Reads events into seen {payload n: stream seq} until `want` distinct ones arrived;
    a repeat (same n twice) fails the test. Status frames go to `statuses`."""
    while len(seen) < want:
        f = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if statuses is not None and f.get("type") == "status":
            statuses.append(f)
        for e in events_of(f):
            n = e["event"]["payload"]["n"]
            assert n not in seen, f"duplicate n={n}"
            seen[n] = e["seq"]


async def _publish(mesh: Mesh, tag: str, lo: int, hi: int) -> None:
    await mesh.publish_many([
        Event(event_type="ORDER_PLACED", account=tag, symbol="AAPL", payload={"n": i})
        for i in range(lo, hi)
    ])


@pytest.mark.slow
async def test_resume_on_second_instance_after_first_is_killed(
    two_gateways: tuple[GatewayProc, GatewayProc], keys: Keys, mesh: Mesh, tag: str
) -> None:
    a, b = two_gateways
    token = keys.token(account=tag)
    ws = await _orders(a, token)
    sub = await recv_until(ws, lambda f: f.get("id") == "o")
    positions: dict[str, int] = dict(sub["positions"])
    seen: dict[int, int] = {}
    await _publish(mesh, tag, 0, 100)
    await _collect(ws, seen, 100)
    positions["TM_HIGH"] = max(seen.values())
    a.kill()  # SIGKILL: no drain, no goodbye
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    await _publish(mesh, tag, 100, 300)  # missed while disconnected
    ws2 = await _orders(b, token, resume=positions)
    live = asyncio.create_task(_publish(mesh, tag, 300, 400))  # during the replay
    statuses: list[dict] = []
    await _collect(ws2, seen, 400, statuses)
    await live
    assert sorted(seen) == list(range(400))
    seqs = [seen[n] for n in range(400)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 400
    # Status frames overtake queued events, so "live" may come before the last replayed.
    done = next((f for f in statuses if f.get("state") == "live"), None) or await recv_until(
        ws2, lambda f: f.get("state") == "live")
    assert done["replayed"] >= 200
    await ws2.close()


@pytest.mark.slow
async def test_sigterm_drains_with_resume_point(
    two_gateways: tuple[GatewayProc, GatewayProc], keys: Keys, mesh: Mesh, tag: str
) -> None:
    a, b = two_gateways
    token = keys.token(account=tag)
    ws = await _orders(a, token)
    await recv_until(ws, lambda f: f.get("id") == "o")
    seen: dict[int, int] = {}
    await _publish(mesh, tag, 0, 50)
    await _collect(ws, seen, 50)
    a.proc.terminate()
    draining = await recv_until(ws, lambda f: f.get("state") == "draining")
    point = draining["resume"]["o"]
    assert point["positions"]["TM_HIGH"] == max(seen.values())
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012
    await _publish(mesh, tag, 50, 80)
    ws2 = await _orders(b, token, resume=point["positions"])
    await _collect(ws2, seen, 80)
    assert sorted(seen) == list(range(80))
    assert a.proc.wait(10) == 0
    await ws2.close()

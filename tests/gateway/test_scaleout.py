"""Scale-out on one host: two gateway processes on one port (SO_REUSEPORT) both serve,
and a client gets live events whichever process the kernel gave it to."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer, free_port
from tests.gateway.conftest import Keys, events_of, recv_json, recv_until, start_gateway


async def test_two_processes_share_one_port_and_both_serve(
    nats_server: NatsServer, gw_config: Path, keys: Keys, mesh: Mesh, tag: str
) -> None:
    port = free_port()
    a = start_gateway(nats_server.url, gw_config, port, instance="a", reuse_port=True)
    b = start_gateway(nats_server.url, gw_config, port, instance="b", reuse_port=True)
    conns: list[ClientConnection] = []
    try:
        # The kernel spreads connections over the listening sockets by a hash of the
        # address pair: 40 connections all landing on one of two processes has odds 2^-39.
        by_instance: dict[str, list[ClientConnection]] = {"a": [], "b": []}
        token = keys.token(account=tag)
        for _ in range(40):
            ws = await connect(a.url, additional_headers={"Authorization": f"Bearer {token}"})
            conns.append(ws)
            hello = await recv_json(ws)
            assert hello["state"] == "connected"
            by_instance[hello["instance"]].append(ws)
        spread = {k: len(v) for k, v in by_instance.items()}
        assert by_instance["a"], spread
        assert by_instance["b"], spread
        # One client per process subscribes; an event published once reaches both.
        pair = [by_instance["a"][0], by_instance["b"][0]]
        for ws in pair:
            await ws.send(json.dumps({"op": "subscribe", "id": "p", "channel": "prices",
                                      "symbol": tag}))
            # Live-only subscriptions are live once `subscribed` is sent.
            await recv_until(ws, lambda f: f.get("state") == "subscribed")
        await mesh.publish(Event(event_type="PRICE_UPDATE", symbol=tag, payload={"p": 1}))
        for ws in pair:
            f = await recv_until(ws, lambda f: bool(events_of(f)))
            assert events_of(f)[0]["event"]["symbol"] == tag
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        a.stop()
        b.stop()

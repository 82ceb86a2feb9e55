"""Malformed, oversized and binary frames get error frames while the connection and
others keep working; every limit answers with its own error frame or close code."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer
from tests.gateway.conftest import (
    Connect,
    GatewayProc,
    Keys,
    closed,
    events_of,
    recv_json,
    recv_until,
    start_gateway,
    write_config,
)


async def test_bad_frames_answered_and_others_unaffected(
    client: Connect, keys: Keys, mesh: Mesh, tag: str
) -> None:
    bad = await client(keys.token(sub="mallory"))
    good = await client(keys.token(sub="bob"))
    await recv_json(bad)
    await recv_json(good)
    await good.send(json.dumps({"op": "subscribe", "id": "p", "channel": "prices",
                                "symbol": tag}))
    await recv_until(good, lambda f: f.get("id") == "p")
    cases = [
        ("{not json", "malformed"),
        ('{"op": "launch"}', "malformed"),
        ('{"op": "subscribe"}', "malformed"),  # no id
        ('{"op": "subscribe", "id": 5}', "malformed"),
        ('{"op": "ping", "extra": 1}', "malformed"),
        ("[]", "malformed"),
        (b"\x00\x01binary", "binary_frame"),
        ("x" * (64 * 1024 + 1), "frame_too_large"),
        (json.dumps({"op": "subscribe", "id": "f", "channel": "prices",
                     "filter": {"field": "payload.x", "op": "~", "value": 1}}),
         "invalid_filter"),
        (json.dumps({"op": "unsubscribe", "id": "zz"}), "unknown_subscription"),
    ]
    for frame, code in cases:
        await bad.send(frame)
        f = await recv_until(bad, lambda f: f.get("type") == "error")
        assert f["code"] == code, (frame[:40], f)
    # The offending connection still works...
    await bad.send(json.dumps({"op": "ping", "id": "still-here"}))
    assert (await recv_until(bad, lambda f: f.get("type") == "pong"))["id"] == "still-here"
    # ...and so does everyone else's.
    await mesh.publish(Event(event_type="PRICE_UPDATE", symbol=tag, payload={"p": 1}))
    f = await recv_until(good, lambda f: bool(events_of(f)))
    assert events_of(f)[0]["event"]["symbol"] == tag


@pytest.fixture(scope="module")
def limited(nats_server: NatsServer, keys: Keys,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    cfg = write_config(tmp_path_factory.mktemp("lim") / "gateway.toml", keys, """
[gateway.limits]
ops_per_s = 5.0
ops_burst = 5
max_subscriptions = 3
max_connections_per_user = 2
connects_per_s_per_ip = 0.5
connect_burst_per_ip = 6
""")
    g = start_gateway(nats_server.url, cfg)
    yield g
    g.stop()


async def test_limits(limited: GatewayProc, keys: Keys) -> None:
    def open_(sub: str):
        return connect(limited.url, additional_headers={
            "Authorization": f"Bearer {keys.token(sub=sub)}"})

    # Inbound rate per user: the burst passes, the rest is refused, bob is unaffected.
    a = await open_("alice")
    bob = await open_("bob")
    await recv_json(a)
    await recv_json(bob)
    for i in range(12):
        await a.send(json.dumps({"op": "ping", "id": str(i)}))
    frames = [await recv_until(a, lambda f: f["type"] in ("pong", "error")) for _ in range(12)]
    assert sum(f["type"] == "pong" for f in frames) <= 6
    assert any(f.get("code") == "rate_limited" for f in frames)
    await bob.send(json.dumps({"op": "ping", "id": "b"}))
    assert (await recv_until(bob, lambda f: f["type"] == "pong"))["id"] == "b"
    # Subscriptions per connection (bob still has his burst).
    for i in range(4):
        await bob.send(json.dumps({"op": "subscribe", "id": f"s{i}", "channel": "prices"}))
    replies = [await recv_until(bob, lambda f: f.get("id", "").startswith("s"))
               for _ in range(4)]
    assert [r["type"] for r in replies] == ["status", "status", "status", "error"]
    assert replies[3]["code"] == "too_many_subscriptions"
    # Connections per user: alice has one open; a second is fine, a third is closed.
    a2 = await open_("alice")
    await recv_json(a2)
    a3 = await open_("alice")
    assert (await closed(a3))[0] == 4009
    # Connection attempts per IP: the burst (6) runs out; the next is refused.
    codes = []
    for _ in range(8):
        c = await open_("carol")
        try:
            first = json.loads(await asyncio.wait_for(c.recv(), 10))
            codes.append(first.get("state"))
        except ConnectionClosed as e:
            codes.append(e.rcvd.code if e.rcvd else None)
        await c.close()
    assert 4010 in codes
    for ws in (a, bob, a2):
        await ws.close()


async def test_frame_over_the_hard_limit_closes_with_1009(client: Connect, keys: Keys) -> None:
    """Above `hard_frame_bytes` (16 MB) the server refuses the frame itself: close 1009
    (message too big), and the connection ends instead of hanging."""
    ws = await client(keys.token(sub="bigsender"))
    await recv_json(ws)
    with contextlib.suppress(ConnectionClosed):
        await ws.send("x" * (16 * 1024 * 1024 + 1))
    code, _reason = await closed(ws, 30)
    assert code == 1009

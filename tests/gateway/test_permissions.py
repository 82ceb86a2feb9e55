"""Roles -> subjects: unauthorized subscriptions get an error frame and never any data,
whatever wildcards or escapes the client tries."""

from __future__ import annotations

import json

import pytest

from mesh.client import Mesh
from mesh.events import Event
from tests.gateway.conftest import Connect, Keys, events_of, recv_json, recv_until

TRICKS = [
    ({"domain": "order"}, "forbidden"),  # any account
    ({"domain": "order", "account": "{other}"}, "forbidden"),
    ({"channel": "orders", "account": "{other}"}, "forbidden"),
    ({"subject": "tm.*.order.*.*.*"}, "forbidden"),
    ({"subject": "tm.>"}, "forbidden"),
    ({"subject": ">"}, "invalid"),
    ({"subject": "tm.critical.>"}, "forbidden"),
    ({"subject": "tm.*.*.*.*.{own}"}, "forbidden"),  # own account, but any domain
    ({"domain": "risk"}, "forbidden"),
    ({"event_type": "MARGIN_CALL", "account": "{own}"}, "forbidden"),
    ({"domain": "order", "account": "{own}.>"}, "invalid"),
    ({"domain": "order", "account": "{own}*"}, "invalid"),
    ({"domain": "order", "account": "{own} "}, "invalid"),
    ({"domain": "order", "account": "{own}\u0000"}, "invalid"),
    ({"domain": "order", "account": "{own}\u2024x"}, "invalid"),  # one-dot leader
    ({"subject": "tm.high.order.ORDER_PLACED.*.{own}~2E~3E"}, "invalid"),  # escaped '.>'
    ({"subject": "tm.high.order.ORDER_PLACED.*.{own}~2A"}, "invalid"),  # escaped '*'
    ({"subject": "tm.high.order.>.{own}"}, "invalid"),
    ({"subject": "tm.high.order.ORDER_PLACED.*.{own}", "account": "{own}"}, "invalid"),
    ({"event_type": "ORDER_PLACED", "domain": "market"}, "invalid"),
    ({"domain": "Order"}, "invalid"),
    ({"channel": "nope"}, "unknown_channel"),
]


def _fill(v: object, own: str, other: str) -> object:
    return v.format(own=own, other=other) if isinstance(v, str) else v


async def test_tricks_get_errors_and_no_data(
    client: Connect, keys: Keys, mesh: Mesh, tag: str
) -> None:
    own, other = f"{tag}A", f"{tag}B"
    ws = await client(keys.token(account=own))
    await recv_json(ws)
    for i, (req, code) in enumerate(TRICKS):
        body = {"op": "subscribe", "id": f"t{i}", **{k: _fill(v, own, other)
                                                       for k, v in req.items()}}
        await ws.send(json.dumps(body))
        f = await recv_until(ws, lambda f, i=i: f.get("id") == f"t{i}")
        assert f["type"] == "error", (req, f)
        assert f["code"] == code, (req, f)
    # An allowed subscription on the trader's own account, then: another account's order,
    # a risk event and a notification for someone else -- and last, our own order. Only
    # that one may arrive.
    await ws.send(json.dumps({"op": "subscribe", "id": "mine", "channel": "orders"}))
    ok = await recv_until(ws, lambda f: f.get("id") == "mine")
    assert ok["state"] == "subscribed"
    assert ok["pattern"] == f"tm.*.order.*.*.{own}.*"
    await mesh.publish(Event(event_type="ORDER_PLACED", account=other, symbol="X"))
    await mesh.publish(Event(event_type="MARGIN_CALL", account=own, symbol="X"))
    await mesh.publish(Event(event_type="USER_NOTIFICATION", account=other))
    await mesh.publish(Event(event_type="ORDER_FILLED", account=own, symbol="X"))
    got = await recv_until(ws, lambda f: bool(events_of(f)))
    evs = events_of(got)
    assert [e["event"]["event_type"] for e in evs] == ["ORDER_FILLED"]
    assert evs[0]["event"]["account"] == own


@pytest.mark.parametrize(
    ("roles", "req", "allowed"),
    [
        (["risk_officer"], {"domain": "risk"}, True),
        (["risk_officer"], {"domain": "order"}, False),
        (["admin"], {"subject": "tm.>"}, True),
        (["auditor"], {"subject": "tm.critical.>", "from_time": "2020-01-01T00:00:00+00:00"},
         True),
        (["trader"], {"channel": "prices", "from_time": "2020-01-01T00:00:00+00:00"}, False),
        (["trader", "risk_officer"], {"domain": "risk"}, True),
        (["guest"], {"channel": "prices"}, False),
    ],
)
async def test_roles_from_config(
    client: Connect, keys: Keys, roles: list[str], req: dict, allowed: bool
) -> None:
    ws = await client(keys.token(roles=roles))
    await recv_json(ws)
    await ws.send(json.dumps({"op": "subscribe", "id": "s", **req}))
    f = await recv_until(ws, lambda f: f.get("id") == "s")
    assert (f["type"] == "status") is allowed, f

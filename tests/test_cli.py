"""The `mesh` command end to end, as a user runs it (a real process, a real server)."""

from __future__ import annotations

import json

from mesh import chain
from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer
from tests.helpers import mesh_command


async def mesh_cli(url: str, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    return await mesh_command("--url", url, *args, timeout=timeout)


def a_chain(tag: str) -> list[Event]:
    placed = Event(event_type="ORDER_PLACED", symbol="AAPL", account=tag, payload={"qty": 10})
    partial = placed.caused("ORDER_PARTIAL_FILL", symbol="AAPL", account=tag, payload={"qty": 4})
    filled = partial.caused("ORDER_FILLED", symbol="AAPL", account=tag, payload={"qty": 6})
    position = filled.caused("POSITION_UPDATE", symbol="AAPL", account=tag, payload={"qty": 10})
    pnl = filled.caused("PNL_CHANGE", symbol="AAPL", account=tag, payload={"unrealized": 3.5})
    breach = filled.caused("MARGIN_CALL", account=tag, payload={"deficit": 100})
    return [placed, partial, filled, position, pnl, breach]


async def test_chain_builds_the_causation_tree_across_streams(mesh: Mesh, tag: str) -> None:
    events = a_chain(tag)
    await mesh.publish_many(events)
    await mesh.publish(Event(event_type="ORDER_PLACED", symbol="AAPL", account=tag))  # unrelated
    found = await chain.collect(mesh.nc, events[0].correlation_id)
    assert sorted(e.event_id for _, _, e in found) == sorted(e.event_id for e in events)
    (root,) = chain.build(found)
    assert root.event.event_type == "ORDER_PLACED"
    (partial,) = root.children
    (filled,) = partial.children
    assert sorted(c.event.event_type for c in filled.children) == [
        "MARGIN_CALL",
        "PNL_CHANGE",
        "POSITION_UPDATE",
    ]
    assert {c.stream for c in filled.children} == {"TM_CRITICAL", "TM_STANDARD"}


async def test_mesh_chain_command_prints_the_tree(nats_server: NatsServer, tag: str) -> None:
    events = a_chain(tag)
    async with Mesh.connect(nats_server.url) as m:
        await m.publish_many(events)
    code, out, _ = await mesh_cli(nats_server.url, "chain", events[0].correlation_id)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"ORDER_PLACED AAPL {tag}")
    assert lines[1].startswith("└─ ORDER_PARTIAL_FILL")
    assert lines[2].startswith("   └─ ORDER_FILLED")
    assert len(lines) == 6
    code, _, err = await mesh_cli(nats_server.url, "chain", "no-such-correlation")
    assert code == 1
    assert "no events" in err


async def test_mesh_pub_then_sub_replays_it_and_streams_counts_it(
    nats_server: NatsServer, tag: str
) -> None:
    code, out, err = await mesh_cli(
        nats_server.url,
        "pub",
        "PRICE_UPDATE",
        "--symbol",
        "BRK.B",
        "--payload",
        json.dumps({"price": 451.2, "tag": tag}),
    )
    assert code == 0, err
    assert "-> high seq" in out
    code, out, err = await mesh_cli(
        nats_server.url,
        "sub",
        "--type",
        "PRICE_UPDATE",
        "--symbol",
        "BRK.B",
        "--from",
        "all",
        "--where",
        f'payload.tag == "{tag}"',
        "--count",
        "1",
        "--json",
    )
    assert code == 0, err
    event = json.loads(out.splitlines()[0])
    assert event["symbol"] == "BRK.B"
    assert event["payload"]["tag"] == tag
    code, out, _ = await mesh_cli(nats_server.url, "streams", "--json")
    rows = {r["stream"]: r for r in json.loads(out) if "stream" in r}
    assert rows["TM_HIGH"]["messages"] >= 1
    assert set(rows) >= {"TM_CRITICAL", "TM_HIGH", "TM_STANDARD", "TM_BACKGROUND"}


async def test_bad_input_on_the_command_line_is_a_clear_error(nats_server: NatsServer) -> None:
    code, _, err = await mesh_cli(nats_server.url, "pub", "NOT_A_TYPE")
    assert code == 2
    assert "unknown event type 'NOT_A_TYPE'" in err
    code, _, err = await mesh_cli(nats_server.url, "pub", "PRICE_UPDATE", "--symbol", "A B")
    assert code == 2
    assert "invalid symbol" in err
    code, _, err = await mesh_cli(nats_server.url, "sub", "--where", "payload.price >")
    assert code == 2
    assert "column" in err

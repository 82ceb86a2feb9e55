"""Event chains: the causation tree of every event that shares a correlation id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client

from mesh import events as ev
from mesh import history, wire
from mesh.catalog import Priority
from mesh.events import Event


@dataclass
class Node:
    event: Event
    stream: str
    seq: int
    children: list[Node] = field(default_factory=list)


async def collect(
    nc: Client, correlation_id: str, since: datetime | None = None
) -> list[tuple[str, int, Event]]:
    """All events of a correlation, found by their header (payloads of others not decoded)."""
    found = []
    for p in Priority:
        async for m in history.scan(nc, p.stream, start_time=since):
            if m.headers.get(wire.HDR_CORRELATION) == correlation_id:
                found.append((m.stream, m.seq, ev.decode(m.data)))
    return found


def build(found: Iterable[tuple[str, int, Event]]) -> list[Node]:
    """Roots first, children in time order. An event whose cause is missing is a root."""
    nodes = {e.event_id: Node(e, stream, seq) for stream, seq, e in found}
    roots: list[Node] = []
    for node in sorted(nodes.values(), key=lambda n: (n.event.timestamp, n.event.event_id)):
        parent = nodes.get(node.event.causation_id or "")
        (parent.children if parent is not None else roots).append(node)
    return roots


def _line(n: Node) -> str:
    e = n.event
    t = datetime.fromtimestamp(e.timestamp / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]
    where = " ".join(x for x in (e.symbol, e.account) if x)
    return f"{e.event_type} {where} [{t} {e.source} {n.stream}#{n.seq}] {e.event_id}"


def render(roots: list[Node]) -> str:
    lines: list[str] = []

    def walk(node: Node, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(prefix + branch + _line(node))
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        for i, c in enumerate(node.children):
            walk(c, child_prefix, i == len(node.children) - 1, False)

    for r in roots:
        walk(r, "", True, True)
    return "\n".join(lines)

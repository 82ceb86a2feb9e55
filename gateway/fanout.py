"""Shared subscriptions: one JetStream consumer per subject pattern per gateway process.

Every session interested in a pattern is a `Member` of that pattern's `Group`. The group
encodes each event once (`Out.frame`, bytes shared by every recipient) and offers it to
each member, which applies its own content filter and resume floor and queues it on its
session. The group's consumer is removed when its last member leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gateway import protocol
from mesh.catalog import Catalog, Priority
from mesh.client import Mesh
from mesh.events import Event
from mesh.subscriber import Start, Subscription

if TYPE_CHECKING:
    from gateway.session import Session

log = logging.getLogger("gateway.fanout")
Match = Callable[[Event, Mapping[str, str] | None], bool]
CONFLATABLE_DOMAINS = frozenset({"market"})


class Out:
    """One event as sent: the encoded frame plus what queues need to know about it."""

    __slots__ = ("_conflated", "ckey", "frame", "must", "pattern", "pkey", "priority", "rank",
                 "seq", "stream", "ts")

    def __init__(self, pattern: str, stream: str, seq: int, event: Event, priority: Priority,
                 domain: str, frame: bytes | None = None) -> None:
        self.pattern = pattern
        self.stream = stream
        self.seq = seq
        self.pkey = (pattern, stream)
        self.priority = priority.value
        self.rank = priority.rank
        self.ts = event.timestamp
        # Market data may be conflated (latest per symbol); everything else must arrive.
        self.must = priority is Priority.CRITICAL or domain not in CONFLATABLE_DOMAINS
        self.ckey = (pattern, event.event_type, event.symbol)
        self.frame = frame or protocol.event_frame(pattern, stream, seq, event)
        self._conflated: bytes | None = None

    def conflated_frame(self) -> bytes:
        if self._conflated is None:
            self._conflated = protocol.mark_conflated(self.frame)
        return self._conflated


class Member:
    """One session subscription inside a group."""

    __slots__ = ("buffer", "floor", "match", "session", "sub_id")

    def __init__(self, session: Session, sub_id: str, match: Match | None) -> None:
        self.session = session
        self.sub_id = sub_id
        self.match = match
        self.floor: dict[str, int] = {}  # per stream: events at or below were (re)played
        self.buffer: list[tuple[Out, Event, Mapping[str, str]]] | None = None

    def offer(self, out: Out, event: Event, headers: Mapping[str, str]) -> None:
        if out.seq <= self.floor.get(out.stream, 0):
            return
        if self.match is not None and not self.match(event, headers):
            return
        if self.buffer is not None:  # still replaying: live events wait until it is done
            self.buffer.append((out, event, headers))
            return
        self.session.enqueue(out)

    def go_live(self) -> None:
        buf, self.buffer = self.buffer or [], None
        for out, event, headers in buf:
            self.offer(out, event, headers)


class Group:
    def __init__(self, hub: Hub, pattern: str) -> None:
        self.hub = hub
        self.pattern = pattern
        self.members: dict[int, Member] = {}
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.sub = await self.hub.mesh.subscribe(
            self.pattern, start=Start.new(), ack="none"
        ).start()
        self.task = asyncio.create_task(self._pump(self.sub), name=f"group {self.pattern}")

    async def _pump(self, sub: Subscription) -> None:
        catalog = self.hub.catalog
        pattern = self.pattern
        members = self.members
        arrived = self.hub.arrived
        while True:
            d = await sub.next()
            if not members:
                continue
            try:
                domain = catalog.spec(d.event.event_type).domain
            except Exception:
                domain = ""
            out = Out(pattern, d.stream, d.seq, d.event, d.priority, domain)
            arrived(out.priority, (time.time_ns() - out.ts) / 1e6)
            headers = d.headers
            seq, stream, event = d.seq, d.stream, d.event
            for m in list(members.values()):
                try:
                    # The common case inlined (this loop runs once per event per member):
                    # live, no content filter, past the resume floor.
                    if m.buffer is None and m.match is None:
                        if seq > m.floor.get(stream, 0):
                            m.session.enqueue(out)
                    else:
                        m.offer(out, event, headers)
                except Exception:  # one session's trouble must not stop the others
                    log.exception("offer to %s failed", m.sub_id)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.sub is not None:
            await self.sub.close()


class Hub:
    def __init__(self, mesh: Mesh, catalog: Catalog) -> None:
        self.mesh = mesh
        self.catalog = catalog
        self.groups: dict[str, Group] = {}
        # (priority, ms since publish) per event taken from NATS; the gateway's metrics.
        self.arrived: Callable[[str, float], None] = lambda p, ms: None
        self._lock = asyncio.Lock()

    async def join(self, pattern: str, member: Member) -> Group:
        g = self.groups.get(pattern)
        if g is None:
            async with self._lock:
                g = self.groups.get(pattern)
                if g is None:
                    g = Group(self, pattern)
                    await g.start()
                    self.groups[pattern] = g
        g.members[id(member)] = member
        return g

    async def leave(self, pattern: str, member: Member) -> None:
        g = self.groups.get(pattern)
        if g is None:
            return
        g.members.pop(id(member), None)
        if not g.members:
            async with self._lock:
                if not g.members and self.groups.get(pattern) is g:
                    del self.groups[pattern]
                    await g.close()

    async def close(self) -> None:
        for g in list(self.groups.values()):
            await g.close()
        self.groups.clear()

"""Shared subscriptions: one JetStream consumer per subject pattern per gateway process.

Every session interested in a pattern is a `Member` of that pattern's `Group`. The group
encodes each event once (`Out.frame`, bytes shared by every recipient). The group's
consumer is removed when its last member leaves.

Two ways an event reaches a member's session:

* Critical events, and every event to a member with a content filter or still replaying
  (a "special" member), are offered to the member one by one at once: it applies its
  filter and resume floor and queues the event on its session.
* Other events collect in the group's window. When the gateway's flush pass comes, the
  window becomes `Chunk`s, each one frame built once, and every other member's session
  gets the same chunks (`Group.attach`). A session that is caught up writes that shared
  frame as it is; one that is behind puts the chunk's events in its queues, where the
  conflation and delivery bounds apply. At 1,000 clients queueing each event per session
  and building each session's frame was ~40 % of a gateway process's CPU (py-spy,
  docs/gateway.md, "2026-11-28, 10:20: shared window chunks"; decisions §23).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gateway import protocol
from gateway.metrics import Histogram
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


class Chunk:
    """Events of one group's window as one frame, built once for every member that gets
    it: the frame, and what a session records when it has sent it."""

    __slots__ = ("age", "counts", "first", "frame", "inner", "last", "lowest", "n", "outs",
                 "size")

    def __init__(self, outs: list[Out], ages: Callable[[str], Histogram]) -> None:
        self.outs = outs
        frames = [o.frame for o in outs]
        self.n = len(outs)
        self.size = sum(map(len, frames))
        self.inner = b",".join(frames)  # for a frame that joins several groups' chunks
        self.frame = frames[0] if self.n == 1 else protocol.batch_of(self.inner)
        self.first = outs[0]  # the oldest: the frame's age is its age
        self.age = ages(self.first.priority)  # where a session records that age
        last: dict[tuple[str, str], int] = {}
        lowest: dict[str, int] = {}
        counts: dict[str, int] = {}
        for o in outs:  # in stream order: the last one per key wins
            last[o.pkey] = o.seq
            lowest.setdefault(o.stream, o.seq)
            counts[o.priority] = counts.get(o.priority, 0) + 1
        self.last = last
        self.lowest = lowest
        self.counts = tuple(counts.items())


def chunks_of(outs: list[Out], max_events: int, max_bytes: int,
              ages: Callable[[str], Histogram]) -> list[Chunk]:
    """The window as chunks of at most `max_events` events and about `max_bytes` bytes."""
    out: list[Chunk] = []
    start, size = 0, 0
    for i, o in enumerate(outs):
        if i > start and (i - start >= max_events or size + len(o.frame) > max_bytes):
            out.append(Chunk(outs[start:i], ages))
            start, size = i, 0
        size += len(o.frame)
    out.append(Chunk(outs[start:], ages))
    return out


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
        # Members offered each event as it comes (content filter, replaying, or joined
        # during the current window); the others get the window's chunks.
        self.special: dict[int, Member] = {}
        self.window: list[Out] = []
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.sub = await self.hub.mesh.subscribe(
            self.pattern, start=Start.new(), ack="none"
        ).start()
        self.task = asyncio.create_task(self._pump(self.sub), name=f"group {self.pattern}")

    def add(self, member: Member) -> None:
        # Special until the end of a window: a member that joined in the middle of one
        # must not also get the chunk of what came before it joined.
        self.members[id(member)] = member
        self.special[id(member)] = member

    def remove(self, member: Member) -> None:
        self.members.pop(id(member), None)
        self.special.pop(id(member), None)

    async def _pump(self, sub: Subscription) -> None:
        catalog = self.hub.catalog
        pattern = self.pattern
        members = self.members
        special = self.special
        arrived = self.hub.arrived
        windows = self.hub.windows
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
            if out.rank and windows is not None:
                if not self.window:  # the first of a window: the flush pass will attach it
                    self.hub.open_window(self)
                self.window.append(out)
                offer_to = special
            else:  # critical (or no windows configured): every member, now
                offer_to = members
            if not offer_to:
                continue
            headers = d.headers
            seq, stream, event = d.seq, d.stream, d.event
            for m in list(offer_to.values()):
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

    def attach(self) -> None:
        """The window so far as chunks, given to every member that is not special (its
        session flushes them in this pass). Then special members that are live with no
        filter stop being special: from the next window on they get chunks."""
        outs, self.window = self.window, []
        if outs:
            hub = self.hub
            chunks = chunks_of(outs, hub.chunk_events, hub.chunk_bytes, hub.ages)
            streams = {o.stream for o in outs}
            special = self.special
            for key, m in self.members.items():
                if key in special:
                    continue
                try:
                    # (A floor on streams with no event here does not matter: C-level test.)
                    if (m.floor and not m.floor.keys().isdisjoint(streams)
                            and not _above_floor(m.floor, chunks)):
                        for o in outs:  # some were (re)played already: one by one
                            if o.seq > m.floor.get(o.stream, 0):
                                m.session.enqueue(o)
                        continue
                    m.session.take(chunks)
                except Exception:  # one session's trouble must not stop the others
                    log.exception("chunk to %s failed", m.sub_id)
        for key, m in list(self.special.items()):
            if m.buffer is None and m.match is None:
                del self.special[key]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.sub is not None:
            await self.sub.close()


def _above_floor(floor: dict[str, int], chunks: list[Chunk]) -> bool:
    """Whether every event of the chunks is past the member's resume floor. A stream whose
    events here are all past it is dropped from the floor: later ones are later still."""
    ok = True
    for c in chunks:
        for stream, lowest in c.lowest.items():
            f = floor.get(stream)
            if f is None:
                continue
            if lowest > f:
                del floor[stream]
            else:
                ok = False
    return ok


class Hub:
    def __init__(self, mesh: Mesh, catalog: Catalog) -> None:
        self.mesh = mesh
        self.catalog = catalog
        self.groups: dict[str, Group] = {}
        # (priority, ms since publish) per event taken from NATS; the gateway's metrics.
        self.arrived: Callable[[str, float], None] = lambda p, ms: None
        # priority -> the histogram of event age at send (the gateway's metrics).
        self.ages: Callable[[str], Histogram] = lambda p: Histogram()
        # Groups with a window open (non-critical events since the last flush pass), when
        # the gateway coalesces (flush_ms > 0); None: every event goes out on its own.
        self.windows: set[Group] | None = None
        self.window_opened = asyncio.Event()
        self.chunk_events, self.chunk_bytes = 0, 0  # a chunk's limits (one frame's)
        self._lock = asyncio.Lock()

    def coalesce(self, window_opened: asyncio.Event, max_events: int, max_bytes: int) -> None:
        """Non-critical events wait in their group's window for the gateway's flush pass,
        which `window_opened` starts; a window makes chunks of at most `max_events` events
        and about `max_bytes` bytes. Called before any group starts."""
        self.windows = set()
        self.window_opened = window_opened
        self.chunk_events, self.chunk_bytes = max_events, max_bytes

    def open_window(self, group: Group) -> None:
        assert self.windows is not None
        self.windows.add(group)
        self.window_opened.set()

    def attach_windows(self) -> None:
        """Every open window to its members' sessions (the flush pass's first step)."""
        if self.windows:
            groups = list(self.windows)
            self.windows.clear()
            for g in groups:
                g.attach()

    async def join(self, pattern: str, member: Member) -> Group:
        g = self.groups.get(pattern)
        if g is None:
            async with self._lock:
                g = self.groups.get(pattern)
                if g is None:
                    g = Group(self, pattern)
                    await g.start()
                    self.groups[pattern] = g
        g.add(member)
        return g

    async def leave(self, pattern: str, member: Member) -> None:
        g = self.groups.get(pattern)
        if g is None:
            return
        g.remove(member)
        if not g.members:
            async with self._lock:
                if not g.members and self.groups.get(pattern) is g:
                    del self.groups[pattern]
                    await g.close()

    async def close(self) -> None:
        for g in list(self.groups.values()):
            await g.close()
        self.groups.clear()

"""Shared window chunks (gateway/fanout.py): real NATS, the real Gateway, Group and
Session objects in this process; only the WebSocket is a recorder, so the flush pass can
be driven step by step (the real gateway process runs it on a timer). A recorder that
refuses writes stands for a client that is behind (the real transport's back-pressure is
exercised in test_queues.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import pytest

from gateway.app import Gateway
from gateway.auth import Principal
from gateway.config import GatewaySettings
from gateway.fanout import Group, Member
from gateway.session import Session
from mesh.catalog import builtin
from mesh.client import Mesh
from mesh.events import Event


@dataclass
class Recorder:
    """The socket: frames as written (the same bytes object for every recipient). When
    not accepting, it is a paused transport: `send_now` refuses, and the ASGI `send`
    waits until it accepts again."""

    frames: list[bytes] = field(default_factory=list)
    accepting: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.accepting.set()

    def send_now(self, frame: bytes) -> bool:
        if not self.accepting.is_set():
            return False
        self.frames.append(frame)
        return True

    async def send(self, frame: str) -> None:
        await self.accepting.wait()
        self.frames.append(frame.encode())


@dataclass
class Rig:
    gw: Gateway
    pattern: str
    taken: asyncio.Queue[int]

    def session(self, name: str) -> Session:
        p = Principal(user=name, roles=("admin",), accounts=(), expires=2e9, claims={})
        return Session(self.gw, Recorder(), p, "127.0.0.1")

    async def join(self, s: Session, floor: dict[str, int] | None = None) -> Member:
        m = Member(s, "sub", None)
        m.floor = floor or {}
        await self.gw.hub.join(self.pattern, m)
        return m

    @property
    def group(self) -> Group:
        return self.gw.hub.groups[self.pattern]

    async def taken_from_nats(self, n: int) -> None:
        """Until the group has taken n more events from NATS (each is in its window or
        offered by the time this returns: both happen in the same step as the count)."""
        for _ in range(n):
            await asyncio.wait_for(self.taken.get(), 10)

    async def settle(self, mesh: Mesh, tag: str, *sessions: Session) -> None:
        """One window with an event: members that joined get it offered one by one, and
        get chunks from the next window on. The recorders start empty after it."""
        await publish(mesh, tag, 1)
        await self.taken_from_nats(1)
        self.flush_pass()
        assert not self.group.special
        for s in sessions:
            assert len(s.ws.frames) == 1
            s.ws.frames.clear()

    def flush_pass(self) -> None:
        """What the gateway's flush loop does when a window is due."""
        self.gw.hub.attach_windows()
        dirty = list(self.gw.flush_set)
        self.gw.flush_set.clear()
        for s in dirty:
            s.flush()


@pytest.fixture
async def rig(mesh: Mesh, tag: str) -> AsyncIterator[Rig]:
    settings = msgspec.convert({"flush_ms": 15.0}, GatewaySettings)
    gw = Gateway(settings, mesh, builtin())
    taken: asyncio.Queue[int] = asyncio.Queue()
    gw.hub.arrived = lambda priority, ms: taken.put_nowait(1)
    yield Rig(gw, f"tm.*.*.*.{tag}.>", taken)
    await gw.hub.close()


def seqs(frames: list[bytes]) -> list[int]:
    out: list[int] = []
    for f in frames:
        msg = json.loads(f)
        out += [e["seq"] for e in (msg["events"] if msg["type"] == "batch" else [msg])]
    return out


async def publish(mesh: Mesh, tag: str, n: int, event_type: str = "PRICE_UPDATE") -> list[int]:
    return await mesh.publish_many(
        [Event(event_type=event_type, symbol=tag, account=tag, payload={"i": i}) for i in range(n)]
    )


async def test_caught_up_sessions_get_one_frame_built_once(rig: Rig, mesh: Mesh, tag: str) -> None:
    sessions = [rig.session(f"u{i}") for i in range(3)]
    for s in sessions:
        await rig.join(s)
    await rig.settle(mesh, tag, *sessions)
    before = rig.gw.metrics.events_out["high"]
    sent = await publish(mesh, tag, 5)
    await rig.taken_from_nats(5)
    rig.flush_pass()
    frames = [s.ws.frames for s in sessions]
    assert all(len(f) == 1 for f in frames), frames
    assert frames[0][0] is frames[1][0] is frames[2][0]  # one bytes object for everyone
    assert seqs(frames[0]) == sent
    for s in sessions:  # what a resume point is made of
        assert s.sent[(rig.pattern, "TM_HIGH")] == sent[-1]
        assert s.queued() == 0
    assert rig.gw.metrics.events_out["high"] - before == 15


async def test_a_session_behind_queues_the_chunk_in_order(rig: Rig, mesh: Mesh, tag: str) -> None:
    fast, slow = rig.session("fast"), rig.session("slow")
    await rig.join(fast)
    await rig.join(slow)
    await rig.settle(mesh, tag, fast, slow)
    slow.ws.accepting.clear()
    first = await publish(mesh, tag, 3)
    await rig.taken_from_nats(3)
    rig.flush_pass()  # slow: its frame waits in an ordinary send
    more = await publish(mesh, tag, 2)
    await rig.taken_from_nats(2)
    rig.flush_pass()  # slow: a send is in flight, so the chunk goes into its queue
    assert seqs(fast.ws.frames) == first + more
    assert slow.ws.frames == []
    assert slow.market_n == 2  # queued, not lost
    slow.ws.accepting.set()
    assert slow._inflight is not None
    await slow._inflight
    slow.flush()  # what its writer does next: the queue, in order
    assert seqs(slow.ws.frames) == first + more
    assert slow.sent[(rig.pattern, "TM_HIGH")] == more[-1]


async def test_a_member_joining_mid_window_gets_every_event_once(
    rig: Rig, mesh: Mesh, tag: str
) -> None:
    a, b = rig.session("a"), rig.session("b")
    await rig.join(a)
    await rig.settle(mesh, tag, a)
    before = await publish(mesh, tag, 3)
    await rig.taken_from_nats(3)
    await rig.join(b)  # in the middle of a's window
    during = await publish(mesh, tag, 2)
    await rig.taken_from_nats(2)
    rig.flush_pass()  # a: the window's chunk; b: the two offered to it one by one
    after = await publish(mesh, tag, 2)
    await rig.taken_from_nats(2)
    rig.flush_pass()  # both: the chunk
    assert seqs(a.ws.frames) == before + during + after
    assert seqs(b.ws.frames) == during + after
    assert a.ws.frames[-1] is b.ws.frames[-1]


async def test_events_at_or_below_the_floor_are_not_sent_again(
    rig: Rig, mesh: Mesh, tag: str
) -> None:
    s = rig.session("resumed")
    m = await rig.join(s)
    await rig.settle(mesh, tag, s)
    sent = await publish(mesh, tag, 5)
    # As after a replay that went up to the third event: the first three were sent.
    m.floor = {"TM_HIGH": sent[2], "TM_CRITICAL": 10**9}
    await rig.taken_from_nats(5)
    rig.flush_pass()
    assert seqs(s.ws.frames) == sent[3:]
    # A stream whose events here were all above it needs no floor any more; a stream
    # with no event in the window keeps its floor.
    more = await publish(mesh, tag, 2)
    await rig.taken_from_nats(2)
    rig.flush_pass()
    assert seqs(s.ws.frames) == sent[3:] + more
    assert m.floor == {"TM_CRITICAL": 10**9}


async def test_a_window_larger_than_a_batch_goes_out_in_several_frames(
    rig: Rig, mesh: Mesh, tag: str
) -> None:
    s = rig.session("u")
    await rig.join(s)
    await rig.settle(mesh, tag, s)
    max_batch = rig.gw.settings.queues.max_batch
    sent = await publish(mesh, tag, max_batch + 5)
    await rig.taken_from_nats(len(sent))
    rig.flush_pass()
    assert [len(json.loads(f)["events"]) for f in s.ws.frames] == [max_batch, 5]
    assert seqs(s.ws.frames) == sent


async def test_critical_events_go_out_at_once_not_in_the_window(
    rig: Rig, mesh: Mesh, tag: str
) -> None:
    a, b = rig.session("a"), rig.session("b")
    await rig.join(a)
    await rig.join(b)
    await rig.settle(mesh, tag, a, b)
    prices = await publish(mesh, tag, 2)
    await rig.taken_from_nats(2)
    critical = await publish(mesh, tag, 1, event_type="MARGIN_CALL")
    await rig.taken_from_nats(1)
    assert seqs(a.ws.frames) == critical  # before the window's flush
    assert a.ws.frames[0] is b.ws.frames[0]  # one frame for all
    rig.flush_pass()
    assert seqs(a.ws.frames) == critical + prices


async def test_a_critical_event_goes_ahead_of_a_chunk_held(rig: Rig, mesh: Mesh, tag: str) -> None:
    s = rig.session("u")
    await rig.join(s)
    await rig.settle(mesh, tag, s)
    prices = await publish(mesh, tag, 2)
    await rig.taken_from_nats(2)
    rig.gw.hub.attach_windows()  # given, not yet flushed
    critical = await publish(mesh, tag, 1, event_type="MARGIN_CALL")
    await rig.taken_from_nats(1)
    assert [json.loads(f)["type"] for f in s.ws.frames] == ["batch"]  # one frame, now
    assert seqs(s.ws.frames) == critical + prices
    rig.flush_pass()
    assert len(s.ws.frames) == 1  # nothing left for the pass

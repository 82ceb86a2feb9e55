"""One WebSocket connection: its subscriptions, its priority-aware send queue, its writer.

Queue: one lane per priority (critical first): a plain deque, and an OrderedDict used
once a session falls behind (`conflate_after` market events queued), where a market
event replaces the queued one of the same (pattern, type, symbol): it is removed and the
new one goes to the end, marked conflated, which keeps stream order within a lane.
Must-deliver events (critical, orders, portfolio, notifications) are never dropped: if
more than `max_must` wait, or the socket accepts nothing for `deliver_within_s` while
they wait, the session is closed with 4008 and the client resumes from its last
sequences.

Most non-critical events do not come one by one: a group hands the session its window as
shared chunks (gateway/fanout.py), written as they are when nothing is queued here, and
put into the queues above otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from gateway import errors as E
from gateway import history, protocol
from gateway.auth import Principal
from gateway.errors import RequestError
from gateway.fanout import Chunk, Member, Out
from gateway.permissions import Interest
from mesh import filters, subjects
from mesh.catalog import Priority
from mesh.errors import FilterError, MalformedEvent
from mesh.events import decode

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.session")
PRIORITIES = list(Priority)
PRIORITY_NAMES = tuple(p.value for p in Priority)


class _Resumed:
    """Drives the rest of a coroutine that was stepped by hand until its first
    suspension (`first` is what it yielded), so a Task can finish it: Python 3.11 has
    no eager tasks."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # cancellation included: passed on
                try:
                    value = coro.throw(e)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


async def _resume(coro: Coroutine[Any, Any, None], first: Any) -> None:
    await _Resumed(coro, first)


class SubState:
    __slots__ = ("id", "initial", "member", "pattern", "task")

    def __init__(self, id: str, pattern: str, member: Member) -> None:
        self.id = id
        self.pattern = pattern
        self.member = member
        self.initial: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None


class Session:
    def __init__(self, gw: Gateway, ws: Any, principal: Principal, ip: str) -> None:
        self.gw = gw
        self.ws = ws
        self.principal = principal
        self.ip = ip
        q = gw.settings.queues
        self._conflate_after = q.conflate_after
        self._max_market = q.max_market
        self._max_must = q.max_must
        self._max_batch = q.max_batch
        self._max_bytes = q.max_batch_bytes
        # Per priority: `plain` events in arrival order, then `keyed` ones (once the session
        # is behind: market events keyed by (pattern, type, symbol) so a newer one replaces
        # the queued one; anything queued after them keyed by a counter). Nothing goes to
        # `plain` while `keyed` holds events, so plain + keyed is arrival order.
        self.plain: list[deque[Out]] = [deque() for _ in Priority]
        self.keyed: list[OrderedDict[Any, tuple[Out, bool]]] = [OrderedDict() for _ in Priority]
        self.control: deque[str] = deque()
        # Shared window chunks from the groups (gateway/fanout.py), sent as they are by
        # the next flush when nothing is queued here, else moved into the queues.
        self.chunks: list[Chunk] = []
        self.market_n = 0
        self.must_n = 0
        self._n = 0
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self._room_cleared = False  # room.clear() was called: set it again once drained
        self._metrics = gw.metrics
        self.sent: dict[tuple[str, str], int] = {}
        self.subs: dict[str, SubState] = {}
        self.last_in = time.monotonic()
        self.last_hb = self.last_in
        self.sending_since: float | None = None
        self.conflated = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.done = asyncio.Event()
        self._dirty = False
        self._inflight: asyncio.Future[None] | None = None
        self._flush: set[Session] | None = gw.flush_set if gw.settings.flush_ms > 0 else None
        # Synchronous write of an event frame when the socket is not backed up
        # (gateway/uvicorn_ws.py); None or False: the ASGI send.
        self._send_now: Callable[[bytes], bool] | None = getattr(ws, "send_now", None)

    def flush(self) -> None:
        """Called by the gateway's flush tick, and for critical events. When no send is
        in progress, the batch is built and sent right here, in the caller's stack: a
        send that the socket takes at once completes without waking this session's
        writer task (a task switch per session per tick was ~1/4 of the per-frame cost).
        A send that has to wait for the socket continues as a task, and the writer waits
        for it before sending anything else, so frames keep their order."""
        if self._dirty:  # flushed now: not again in the next pass (if it was put there)
            self._dirty = False
            if self._flush is not None:
                self._flush.discard(self)
        if self.chunks and self._write_chunks():
            return
        if not self._writable_now():
            self.ready.set()
            return
        frame = self._take_batch()
        if frame is not None and not self._write_now(frame):
            self._send_eager(frame)
        if (self.market_n or self.must_n) and self._inflight is None:
            self.ready.set()  # more than one batch was queued: the writer sends the rest

    def _writable_now(self) -> bool:
        """No send in progress, no control frame ahead, not closing: a frame may be
        written from the caller's stack."""
        return (self.sending_since is None and self._inflight is None and not self.control
                and self.close_code is None)

    def _write_chunks(self) -> bool:
        """The groups' chunks written as they are (several joined into one frame while
        they fit a batch) when nothing else is queued or being sent; True if all went.
        What is left goes into the queues, behind what is there, for the ordinary path
        (conflation and the delivery bounds apply there)."""
        chunks = self.chunks
        if not (self.market_n or self.must_n) and self._writable_now():
            max_batch, max_bytes = self._max_batch, self._max_bytes
            sent, events_out = self.sent, self._metrics.events_out
            while chunks:
                first = chunks[0]
                k, n, size = 1, first.n, first.size
                while (k < len(chunks) and n + chunks[k].n <= max_batch
                       and size + chunks[k].size <= max_bytes):
                    n += chunks[k].n
                    size += chunks[k].size
                    k += 1
                frame = (first.frame if k == 1
                         else protocol.batch_of(b",".join([c.inner for c in chunks[:k]])))
                if not self._write_now(frame):
                    break
                for c in chunks[:k]:
                    sent.update(c.last)
                    for name, count in c.counts:
                        events_out[name] += count
                first.age.observe((time.time_ns() - first.first.ts) / 1e6)
                del chunks[:k]
            if not chunks:
                return True
        for c in chunks:
            for out in c.outs:
                self._put(out)
        chunks.clear()
        return False

    def take(self, chunks: list[Chunk]) -> None:
        """A group's window, for the flush pass under way (called by `Group.attach`)."""
        if self.close_code is not None:
            return
        self.chunks += chunks
        if not self._dirty and self._flush is not None:
            self._dirty = True
            self._flush.add(self)

    def _write_now(self, frame: bytes) -> bool:
        """The frame written at once if the transport takes it without waiting: no
        coroutine, no task (this runs once per frame, ~30,000 times a second)."""
        send_now = self._send_now
        if send_now is None:
            return False
        try:
            if not send_now(frame):
                return False
        except Exception as e:  # the connection is gone: end the session like the writer
            log.debug("send failed: %r", e)
            self.done.set()
            return True
        self._metrics.frames_out += 1
        return True

    def _send_eager(self, frame: bytes) -> None:
        coro = self._send(self.ws, frame)
        try:
            first = coro.send(None)
        except StopIteration:
            return
        except Exception as e:  # the connection is gone: end the session like the writer
            log.debug("send failed: %r", e)
            self.done.set()
            return
        task = asyncio.ensure_future(_resume(coro, first))
        self._inflight = task
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._inflight = None
        if task.cancelled() or task.exception() is not None:
            self.done.set()
        elif self.queued() or self.control:
            self.ready.set()

    # -- queueing (called by groups, synchronously) ---------------------------------------

    def enqueue(self, out: Out) -> None:
        if not self._put(out):
            return
        if out.rank == 0 or self._flush is None:
            # Critical goes out at once, sent from here when the socket is idle: a
            # critical event reaches every session, and waking 1,000 writer tasks for it
            # cost more than sending in this loop.
            self.flush()
        elif not self._dirty:
            # Everything else is coalesced: the gateway's flush tick sends it, so a busy
            # session sends one batch frame per tick instead of a frame per event.
            self._dirty = True
            if not self._flush:
                self.gw.flush_wanted.set()  # the first in a window: the flusher starts it
            self._flush.add(self)

    def _put(self, out: Out) -> bool:
        """The event in its lane (conflated when the session is behind); False if the
        session is closing, or was just closed for exceeding its bounds."""
        if self.close_code is not None:
            return False
        rank = out.rank
        keyed = self.keyed[rank]
        if out.must or self.market_n < self._conflate_after:
            if out.must:
                if self.must_n >= self._max_must:
                    self.fail(E.SLOW_CONSUMER, "slow consumer: critical/order events queued "
                              "beyond bounds; reconnect and resume from your last sequences")
                    return False
                self.must_n += 1
            else:
                self.market_n += 1
            if keyed:  # behind the conflating part: keep stream order
                self._n += 1
                keyed[self._n] = (out, False)
            else:
                self.plain[rank].append(out)
        else:
            old = keyed.pop(out.ckey, None)
            keyed[out.ckey] = (out, old is not None)
            if old is not None:
                self.conflated += 1
                self.gw.metrics.conflated += 1
            else:
                self.market_n += 1
                if self.market_n > self._max_market:
                    self._drop_oldest_market(rank)
        return True

    def _drop_oldest_market(self, rank: int) -> None:
        plain = self.plain[rank]
        for i, o in enumerate(plain):
            if not o.must:
                del plain[i]
                break
        else:
            keyed = self.keyed[rank]
            for k, (o, _) in keyed.items():
                if not o.must:
                    del keyed[k]
                    break
            else:
                return
        self.market_n -= 1
        self.gw.metrics.dropped_market += 1
        self.gw.metrics.conflated += 1

    def send_control(self, frame: str) -> None:
        self.control.append(frame)
        self.ready.set()

    def error(self, code: str, message: str, id: str | None = None) -> None:
        self.gw.metrics.errors[code] += 1
        self.send_control(protocol.error(code, message, id))

    def queued(self) -> int:
        return self.market_n + self.must_n

    def fail(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.done.set()

    # -- writer ---------------------------------------------------------------------------

    def _take_batch(self) -> bytes | None:
        """Up to max_batch queued events (critical lane first) as one frame, or None."""
        # Runs once per frame sent (~30,000 times a second at 1,000 clients): locals only.
        if not (self.market_n or self.must_n):
            return None
        frames: list[bytes] = []
        append = frames.append
        size = 0
        must = 0
        first: Out | None = None
        sent = self.sent
        events_out = self._metrics.events_out
        max_batch, max_bytes = self._max_batch, self._max_bytes
        keyed_lanes = self.keyed
        for rank, plain in enumerate(self.plain):
            keyed = keyed_lanes[rank]
            if not plain and not keyed:
                continue
            taken = len(frames)
            if first is None and plain:
                first = plain[0]
            while plain and len(frames) < max_batch and size < max_bytes:
                out = plain.popleft()
                f = out.frame
                append(f)
                size += len(f)
                sent[out.pkey] = out.seq
                must += out.must
            while keyed and len(frames) < max_batch and size < max_bytes:
                _, (out, conflated) = keyed.popitem(last=False)
                f = out.conflated_frame() if conflated else out.frame
                append(f)
                size += len(f)
                sent[out.pkey] = out.seq
                must += out.must
                if first is None:
                    first = out
            if len(frames) > taken:
                events_out[PRIORITY_NAMES[rank]] += len(frames) - taken
        if first is None:
            return None
        self.must_n -= must
        self.market_n -= len(frames) - must
        self._metrics.age(first.priority, (time.time_ns() - first.ts) / 1e6)
        if self._room_cleared and self.queued() < self._max_must // 4:
            self._room_cleared = False
            self.room.set()
        return frames[0] if len(frames) == 1 else protocol.batch(frames)

    async def _writer(self) -> None:
        ws = self.ws
        while True:
            await self.ready.wait()
            if self._inflight is not None:
                await self._inflight  # a send the flusher started: keep frame order
                continue
            if self.control:
                frame = self.control.popleft()
                if not self.control and not self.queued():
                    self.ready.clear()
                await self._send(ws, frame)
                continue
            batch = self._take_batch()
            if not self.queued() and not self.control:
                self.ready.clear()
            if batch is not None:
                await self._send(ws, batch)

    async def _send(self, ws: Any, frame: str | bytes) -> None:
        if isinstance(frame, bytes):  # an event frame
            if self._write_now(frame):
                return
            frame = frame.decode()  # ASGI text frames are str
        self.sending_since = time.monotonic()
        await ws.send(frame)
        self.sending_since = None
        self.gw.metrics.frames_out += 1

    # -- reader ---------------------------------------------------------------------------

    async def _reader(self) -> None:
        lim = self.gw.settings.limits
        while True:
            msg = await self.ws.receive()
            self.last_in = time.monotonic()
            if isinstance(msg, bytes):
                self.error("binary_frame", "binary frames are not supported: send JSON text")
                continue
            if len(msg) > lim.max_frame_bytes:
                self.error("frame_too_large", f"frames are limited to {lim.max_frame_bytes} bytes")
                continue
            if not self.gw.op_buckets.take(self.principal.user):
                self.error("rate_limited", f"more than {lim.ops_per_s:g} operations/s: slow down")
                continue
            try:
                op = protocol.decode_op(msg)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self.error("malformed", f"not a valid operation: {e}")
                continue
            try:
                await self._handle(op)
            except RequestError as e:
                self.error(e.code, e.message, getattr(op, "id", None))

    async def _handle(self, op: protocol.Op) -> None:
        if isinstance(op, protocol.Ping):
            self.send_control(protocol.pong(op.id))
        elif isinstance(op, protocol.Pong):
            pass
        elif isinstance(op, protocol.Subscribe):
            await self.subscribe(op)
        elif isinstance(op, protocol.Unsubscribe):
            st = self.subs.get(op.id)
            if st is None:
                raise RequestError("unknown_subscription", f"no subscription {op.id!r}")
            await self._drop(st)
            self.send_control(protocol.status("unsubscribed", id=op.id))
        elif isinstance(op, protocol.Refresh):
            await self.refresh(op.token)

    # -- operations -----------------------------------------------------------------------

    def _interest(self, op: protocol.Subscribe) -> Interest:
        perms = self.gw.permissions
        fields = {"priority": op.priority, "domain": op.domain, "event_type": op.event_type,
                  "symbol": op.symbol, "account": op.account}
        if op.channel is not None:
            if op.subject is not None:
                raise RequestError("invalid", "give a channel or a subject, not both")
            return perms.from_channel(self.principal, op.channel, fields)
        if op.subject is not None:
            if any(v is not None for v in fields.values()):
                raise RequestError("invalid", "give a subject or fields, not both")
            return perms.from_subject(op.subject)
        return perms.from_fields(fields)

    async def subscribe(self, op: protocol.Subscribe) -> None:
        lim = self.gw.settings.limits
        if not op.id or len(op.id) > 64:
            raise RequestError("invalid", "id: 1 to 64 characters")
        if op.id in self.subs:
            raise RequestError("duplicate_id", f"subscription {op.id!r} exists")
        if len(self.subs) >= lim.max_subscriptions:
            raise RequestError("too_many_subscriptions",
                               f"at most {lim.max_subscriptions} subscriptions per connection")
        interest = self._interest(op)
        perms = self.gw.permissions
        if not perms.allowed(self.principal, interest):
            raise RequestError("forbidden", f"roles {list(self.principal.roles)} may not "
                               f"subscribe to {interest.pattern()}")
        match = None
        if op.filter is not None:
            try:
                match = filters.compile(filters.from_json(op.filter))
            except FilterError as e:
                raise RequestError("invalid_filter", str(e)) from None
        start_time = None
        if op.from_time is not None:
            if not perms.may_replay(self.principal):
                raise RequestError("forbidden", "from_time needs a role with replay")
            try:
                start_time = datetime.fromisoformat(op.from_time)
            except ValueError:
                raise RequestError("invalid", "from_time: ISO 8601") from None
        pattern = interest.pattern()
        streams = [p.stream for p in subjects.priorities_of(pattern)]
        nc = self.gw.mesh.nc
        member = Member(self, op.id, match)
        member.buffer = []  # until the floor is known (and anything missed is replayed)
        st = SubState(op.id, pattern, member)
        self.subs[op.id] = st
        try:
            await self.gw.hub.join(pattern, member)
            positions = {s: await history.last_seq(nc, s) for s in streams}
        except Exception as e:
            await self._drop(st)
            raise RequestError("unavailable", f"event store unavailable: {e}") from None
        st.initial = positions
        resume = {s: v for s, v in (op.resume or {}).items() if s in positions}
        if resume and not perms.may_replay(self.principal):
            behind = sum(max(0, positions[s] - v) for s, v in resume.items())
            if behind > lim.max_resume_events:
                await self._drop(st)
                raise RequestError("resume_too_old", f"{behind} events behind (limit "
                                   f"{lim.max_resume_events}): subscribe with snapshot")
        self.send_control(protocol.status("subscribed", id=op.id, pattern=pattern,
                                          positions=positions))
        if not resume and start_time is None and not op.snapshot:
            member.floor = positions
            member.go_live()
            return
        st.task = asyncio.create_task(
            self._prelive(st, positions, resume, start_time, op.snapshot and not resume)
        )

    async def _prelive(self, st: SubState, positions: dict[str, int], resume: dict[str, int],
                       start_time: datetime | None, snapshot: bool) -> None:
        """Snapshot and/or replay what was missed, then let buffered live events through."""
        nc = self.gw.mesh.nc
        member = st.member
        floor = dict(positions)
        replayed = 0
        try:
            for stream in positions:
                prio = Priority(stream[3:].lower())
                if snapshot:
                    async for seq, data in history.last_per_subject(nc, stream, st.pattern):
                        self._replay_one(st, stream, seq, data, prio, snapshot=True)
                if stream in resume or start_time is not None:
                    after = resume.get(stream) if start_time is None else None
                    async for seq, data in history.since(nc, stream, st.pattern,
                                                         after_seq=after, start_time=start_time):
                        floor[stream] = max(floor[stream], seq)
                        if self._replay_one(st, stream, seq, data, prio, snapshot=False):
                            replayed += 1
                        if self.queued() > self._max_must // 2:
                            self._room_cleared = True
                            self.room.clear()
                            await self.room.wait()
        except Exception as e:
            log.warning("replay of %s failed: %r", st.pattern, e)
            self.fail(E.SLOW_CONSUMER, f"replay failed ({e}); reconnect and resume")
            return
        member.floor = floor
        member.go_live()
        self.send_control(protocol.status("live", id=st.id, replayed=replayed))

    def _replay_one(self, st: SubState, stream: str, seq: int, data: bytes, prio: Priority,
                    snapshot: bool) -> bool:
        try:
            event = decode(data)
        except MalformedEvent:
            return False
        m = st.member.match
        if m is not None and not m(event, None):
            return False
        try:
            domain = self.gw.catalog.spec(event.event_type).domain
        except Exception:
            domain = ""
        frame = protocol.event_frame(st.pattern, stream, seq, event)
        if snapshot:
            frame = protocol.mark_snapshot(frame)
        self.enqueue(Out(st.pattern, stream, seq, event, prio, domain, frame))
        return True

    async def refresh(self, token: str) -> None:
        try:
            p = self.gw.verifier.verify(token)
        except E.AuthError as e:
            raise RequestError("refresh_refused", f"{e.reason} (close code {e.code})") from None
        if p.user != self.principal.user:
            raise RequestError("refresh_refused", "token is for another user")
        self.principal = p
        for st in list(self.subs.values()):
            interest = self.gw.permissions.from_subject(".".join(st.pattern.split(".")[:6]))
            if not self.gw.permissions.allowed(p, interest):
                await self._drop(st)
                self.send_control(protocol.status("revoked", id=st.id))
        self.send_control(protocol.status("refreshed", expires=p.expires))

    # -- lifecycle ------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> None:
        """Called about once a second by the gateway: heartbeats and the bounds."""
        s = self.gw.settings
        if wall >= self.principal.expires:
            self.fail(E.EXPIRED, "token expired: reconnect (or refresh before expiry)")
        elif now - self.last_in > s.idle_timeout_s:
            self.fail(E.IDLE_TIMEOUT, f"no frame from the client for {s.idle_timeout_s:g}s")
        elif (self.must_n and self.sending_since is not None
              and now - self.sending_since > s.queues.deliver_within_s):
            self.fail(E.SLOW_CONSUMER, "slow consumer: critical/order events not delivered in "
                      f"{s.queues.deliver_within_s:g}s; reconnect and resume")
        elif now - self.last_hb >= s.heartbeat_s:
            self.last_hb = now
            self.send_control(protocol.heartbeat())

    def resume_point(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for st in self.subs.values():
            pos = {s: max(v, self.sent.get((st.pattern, s), 0)) for s, v in st.initial.items()}
            out[st.id] = {"pattern": st.pattern, "positions": pos}
        return out

    async def _drop(self, st: SubState) -> None:
        self.subs.pop(st.id, None)
        if st.task is not None:
            st.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await st.task
        await self.gw.hub.leave(st.pattern, st.member)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._writer()),
                 asyncio.create_task(self.done.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.debug("session ended: %r", t.exception())
        finally:
            for t in tasks:
                t.cancel()
            if self._inflight is not None:
                self._inflight.cancel()
            for st in list(self.subs.values()):
                with contextlib.suppress(Exception):
                    await self._drop(st)
            self.chunks.clear()
            for q in self.plain:
                q.clear()
            for k in self.keyed:
                k.clear()
            self.control.clear()
            self.market_n = self.must_n = 0
        if self.close_code is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(self.close_code, self.close_reason), 1.0)

"""JetStream -> ClickHouse sink: one durable pull consumer per priority stream, batched
inserts, each event exactly once in the table.

Why each event lands exactly once (docs/store.md, "Exactly once", has the long form):
1. Per stream, batches are inserted one after another in stream-sequence order, and a
   batch never spans two day partitions, so each insert writes one part: it commits
   whole or not at all. The rows of a stream in the table are therefore always exactly
   the events with `seq <= max(seq)` that the sink has seen.
2. The table, not the consumer, is the cursor. At start the sink reads that high-water
   mark per stream and (re)creates its consumer to deliver from the next sequence, so a
   crash anywhere costs a re-read, not a row. The consumer therefore needs no acks
   (AckNone): acks would only repeat what the table already records, and tracking them
   cost nats-server ~2-3 us of its ~6 us per delivered event (docs/store.md, Figures).
3. Without acks nothing is redelivered, so a delivery lost on the way (a dropped
   connection) must be noticed: the consumer sequence in each reply subject counts
   deliveries one by one, and a reconnect or a jump in it cuts the batch before the hole
   and recreates the consumer after the last event held.
4. A failed insert is retried with the very same batch and the same
   `insert_deduplication_token` (stream + first..last sequence); the table keeps the last
   `non_replicated_deduplication_window` tokens, so an insert that did commit but whose
   answer was lost (timeout, dropped connection to a server) is not written twice.
5. The batch's events that carry an account go to the account table too, in a second
   insert with the same token, after the first. Both commit before the next batch starts,
   so a crash can leave at most the last batch missing there: at start the sink copies the
   main table's account rows above the account table's high-water mark (`_recover`).
When ClickHouse is unreachable the insert is retried with exponential back-off (0.1 s to
5 s), the consumer is not fetched meanwhile, and JetStream holds the backlog. What the sink
holds but has not inserted yet is its own lag (`Sink.held`, reported on `tmmesh.lag`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from nats.aio.client import Client as Nats
from nats.js import api

from mesh import jsapi
from mesh.catalog import Priority
from mesh.errors import MalformedEvent
from mesh.events import decode
from store.config import StoreConfig
from store.puller import Puller, Raw
from store.schema import ACCOUNT_TABLE, TABLE, copy_accounts

log = logging.getLogger("store.sink")

STREAMS = tuple(p.stream for p in Priority)
# ClickHouse codes for input it could not parse: the batch holds a malformed event.
_DATA_ERRORS = {6, 26, 27, 38, 41, 53, 69, 72, 117, 131, 318, 321, 376, 377, 441, 485}
_DAY_NS = 86_400 * 1_000_000_000
_TS_KEY = b'"timestamp":'
_TS_END = (b",", b"}")
_SHAPES_MAX = 100_000  # subjects remembered by the sink; a few MB, then forgotten at once
_INSERT_SETTINGS = {
    "input_format_skip_unknown_fields": 1,
    "input_format_json_read_objects_as_strings": 1,
    "input_format_import_nested_json": 0,
}


class StreamStats(msgspec.Struct):
    stream: str
    rows: int = 0
    batches: int = 0
    committed_seq: int = 0
    delivered_seq: int = 0  # highest sequence taken from JetStream (held or committed)
    resubscribes: int = 0  # consumer recreated after a reconnect or a lost delivery
    redeliveries_dropped: int = 0
    malformed_dropped: int = 0
    insert_failures: int = 0
    last_error: str = ""
    last_insert_ms: float = 0.0


@dataclass
class Batch:
    stream: str
    lines: list[bytes] = field(default_factory=list)  # JSONEachRow, one per event
    accounts: list[bytes] = field(default_factory=list)  # the lines of events with an account
    first: int = 0  # stream sequences of the first and last event taken (0: none)
    last: int = 0
    day: int = -1

    @property
    def token(self) -> str:
        return f"{self.stream}:{self.first}-{self.last}"

    def seqs(self) -> list[int]:
        """The stream sequences of the lines, read back from them (off the hot loop)."""
        return [_seq_of(line) for line in self.lines]


def _seq_of(line: bytes) -> int:
    """The `seq` a line starts with (`{"stream":"<name>","seq":<n>,...`)."""
    i = line.index(b'"seq":') + 6
    return int(line[i : line.index(b",", i)])


def _timestamp(data: bytes) -> int:
    """The event's timestamp, for the events the inlined fast path in `_collect` does not
    read (not 19 digits, not JSON); 0 when there is none."""
    i = data.rfind(_TS_KEY)
    if i < 0:
        return 0
    i += len(_TS_KEY)
    j = data.find(b",", i)
    if j < 0:
        j = data.find(b"}", i)
    try:
        return int(data[i:j])
    except ValueError:
        return 0


def _day_bounds(day: int) -> tuple[bytes, bytes]:
    """The day's first and next day's first timestamp as 19-digit text: for timestamps of
    19 digits (2001 to 2286) the text compares like the number, so the hot loop checks an
    event's day without converting its timestamp."""
    return b"%019d" % (day * _DAY_NS), b"%019d" % ((day + 1) * _DAY_NS)


class _Account(msgspec.Struct):
    account: str | None = None


_account_of = msgspec.json.Decoder(_Account).decode


def _shape(subject: bytes) -> tuple[bytes, bool] | None:
    """What the line of an event on this subject needs from it: the `"domain"` field to
    splice in, and whether the event goes to the account table too. None when the subject
    is not one the mesh publishes (`tm.<priority>.<domain>.<type>.<symbol>.<account>[.<n>]`)
    and so tells neither: then the domain is left empty and the account read from the event."""
    tokens = subject.split(b".")
    if len(tokens) in (6, 7) and tokens[0] == b"tm":
        return b',"domain":"%s",' % tokens[2], tokens[5] != b"_"
    return None


def _odd_shape(data: bytes) -> tuple[bytes, bool]:
    """`_shape` for an event on a subject that tells neither domain nor account."""
    try:
        account = _account_of(data).account
    except (msgspec.DecodeError, msgspec.ValidationError):
        account = None  # not an event: dropped at insert
    return b',"domain":"",', bool(account)


def _tail_of(reply: bytes) -> int:
    """The `rsplit` count after which the stream and consumer sequences are items 1 and 2:
    they are the 5th and 4th tokens from the end of the reply subject in both its forms
    ($JS.ACK.<stream>... and $JS.ACK.<domain>.<hash>.<stream>...)."""
    n = reply.count(b".") + 1
    return n - (5 if n == 9 else 7)


class StreamSink:
    """Moves one stream into the table."""

    def __init__(
        self, nc: Nats, connect: Callable[[], Client], cfg: StoreConfig, stream: str
    ) -> None:
        self.nc = nc
        self.cfg = cfg
        self.stream = stream
        self._connect = connect
        self._client: Client | None = None
        self.stats = StreamStats(stream)
        self._seen = -1  # highest sequence held or committed; -1 until read from the table
        self._leftover: list[Raw] = []  # fetched, not yet batched (day cut or batch full)
        self._tail = 0  # rsplit count that isolates the stream sequence in an ack subject
        self._next_dseq = 1  # the consumer sequence the next delivery must carry
        self._reconnects = 0  # the connection's reconnect count when the consumer was made
        self._broken = False  # a delivery was lost: recreate the consumer after this batch
        self._puller: Puller | None = None
        self._shapes: dict[bytes, tuple[bytes, bool]] = {}  # subject -> _shape(subject)
        self.durable = f"{cfg.durable_prefix}-{stream}"

    # -- ClickHouse side (runs in a worker thread: chDB and HTTP calls block) --------------

    def _db(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None

    def _max_seq(self, table: str) -> int:
        rows = (
            self._db()
            .query(
                f"SELECT max(seq) FROM {self.cfg.database}.{table} WHERE stream = {{s:String}}",
                parameters={"s": self.stream},
            )
            .result_rows
        )
        return int(rows[0][0] or 0) if rows else 0

    def _recover(self) -> int:
        """The main table's high-water mark for this stream, after making the account table
        whole up to it (a crash between a batch's two inserts leaves the second undone)."""
        high = self._max_seq(TABLE)
        done = self._max_seq(ACCOUNT_TABLE)
        if high > done:
            self._db().command(
                copy_accounts(self.cfg.database, "stream = {s:String} AND seq > {done:UInt64}"),
                parameters={"s": self.stream, "done": done},
                settings={"insert_deduplication_token": f"{self.stream}:repair:{done}-{high}"},
            )
        return high

    def _insert(self, batch: Batch) -> None:
        if not batch.lines:
            return
        t = time.perf_counter()
        settings = {**_INSERT_SETTINGS, "insert_deduplication_token": batch.token}
        for table, lines in ((TABLE, batch.lines), (ACCOUNT_TABLE, batch.accounts)):
            if lines:
                self._db().raw_insert(
                    f"{self.cfg.database}.{table}",
                    None,
                    b"\n".join(lines),
                    fmt="JSONEachRow",
                    settings=settings,
                )
        self.stats.last_insert_ms = (time.perf_counter() - t) * 1000

    # -- JetStream side --------------------------------------------------------------------

    async def _subscribe(self) -> Puller:
        """(Re)create the durable consumer to start right after the table's high-water mark.

        The table, not the consumer, is the cursor (module docstring, 2 and 3): recreating
        the consumer at the next sequence after what the sink holds makes the next delivery
        exactly the first missing event, after a start, a reconnect or a lost delivery.
        """
        self._leftover = []  # deliveries of the old consumer past a hole: delivered again
        self._next_dseq = 1
        self._reconnects = self.nc.stats["reconnects"]
        self._broken = False
        with contextlib.suppress(jsapi.JetStreamApiError):
            await jsapi.call(self.nc, f"$JS.API.CONSUMER.DELETE.{self.stream}.{self.durable}", {})
        start: dict[str, object] = (
            {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self._seen + 1}
            if self._seen > 0
            else {"deliver_policy": api.DeliverPolicy.ALL}
        )
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.NONE,
            max_waiting=16,
            **start,  # type: ignore[arg-type]
        )
        await jsapi.call(
            self.nc,
            f"$JS.API.CONSUMER.CREATE.{self.stream}.{self.durable}",
            {"stream_name": self.stream, "config": config.as_dict()},
        )
        puller = self._puller = Puller(self.nc, self.stream, self.durable)
        await puller.start()
        return puller

    def received_seq(self) -> int:
        """The highest sequence that reached this process: batched, or still waiting in
        the puller's buffer or the leftover (read on demand, off the hot loop)."""
        # newest first: the puller's buffer arrived after the leftover
        for msgs in (self._puller.buffered if self._puller else [], self._leftover):
            if msgs:
                reply = msgs[-1][1]
                return max(self.stats.delivered_seq, int(reply.rsplit(b".", _tail_of(reply))[1]))
        return self.stats.delivered_seq

    async def _collect(self, psub: Puller) -> Batch:
        """Next batch: up to batch_rows messages, batch_ms after its first, one day only.

        The hot loop of the sink (one pass per event), so it is written flat: the line
        ClickHouse gets is the event's JSON with stream, seq and domain spliced in front."""
        batch = Batch(self.stream)
        lines, accounts = batch.lines, batch.accounts
        head = b'{"stream":"' + self.stream.encode() + b'","seq":'
        limit = self.cfg.batch_rows
        span = self.cfg.batch_ms / 1000
        deadline: float | None = None
        msgs, self._leftover = self._leftover, []
        seen, day, polled = self._seen, -1, time.monotonic()
        lo = hi = b""  # the batch's day as timestamp text (_day_bounds), once it has one
        shapes = self._shapes
        tail, dseq = self._tail, self._next_dseq
        while True:
            if msgs and not tail:
                tail = self._tail = _tail_of(msgs[0][1])
            room = limit - len(lines)
            if len(msgs) > room:  # a prefetched pull brought more than this batch takes
                msgs, self._leftover = msgs[:room], msgs[room:]
            for k, (subj, reply, data) in enumerate(msgs):
                acked = reply.rsplit(b".", tail)
                d = int(acked[2])
                if d != dseq:  # a delivery went missing (module docstring, 3)
                    log.warning("%s: delivery %d missing, consumer recreated", self.stream, dseq)
                    self._broken = True
                    self._leftover = []
                    break
                seq = int(acked[1])
                if seq <= seen:  # a delivery of something held or committed
                    self.stats.redeliveries_dropped += 1
                    dseq = d + 1
                    continue
                # the event's day without decoding the JSON (validated on error): its
                # timestamp, searched from the end (the encoder writes it after the
                # payload), compared as text with the batch's day
                i = data.rfind(_TS_KEY) + len(_TS_KEY)
                ts = data[i : i + 19]
                if not (lo <= ts < hi and data[i + 19 : i + 20] in _TS_END and i >= len(_TS_KEY)):
                    event_day = _timestamp(data) // _DAY_NS
                    if event_day != day:
                        if lines:  # never two partitions in one insert: cut, keep the rest
                            self._leftover = msgs[k:] + self._leftover
                            break
                        day = event_day
                        lo, hi = _day_bounds(day)
                seen, dseq = seq, d + 1
                shape = shapes.get(subj)
                if shape is None:
                    shape = _shape(subj)
                    if shape is None:
                        shape = _odd_shape(data)
                    else:
                        if len(shapes) >= _SHAPES_MAX:
                            shapes.clear()
                        shapes[subj] = shape
                line = b"%s%d%s%s" % (head, seq, shape[0], data[1:])
                lines.append(line)
                if shape[1]:
                    accounts.append(line)
            self._seen = self.stats.delivered_seq = seen
            self._next_dseq = dseq
            if self.nc.stats["reconnects"] != self._reconnects:
                # pulls and deliveries in flight died with the old connection
                self._broken = True
            if self._broken or self._leftover or len(lines) >= limit:
                break
            if deadline is None and lines:
                deadline = polled + span  # the batch_ms include the poll that started it
            # an empty batch still polls in batch_ms slices: a pull waits for its full count
            # or its expiry, so a long first wait would become lag for a trickle of events
            timeout = span if deadline is None else deadline - time.monotonic()
            if timeout <= 0.001:
                break
            polled = time.monotonic()
            msgs = await psub.fetch(min(limit - len(lines), 10_000), timeout)
            if not msgs and lines:
                break
        batch.day = day
        if lines:
            batch.first, batch.last = _seq_of(lines[0]), seen
        return batch

    async def _commit(self, batch: Batch) -> None:
        delay = 0.1
        while True:
            try:
                await asyncio.to_thread(self._insert, batch)
                break
            except DatabaseError as e:
                self._note_failure(e)
                if getattr(e, "code", None) in _DATA_ERRORS and self._drop_malformed(batch):
                    continue  # retry at once without the malformed events
                if not isinstance(e, DatabaseError) or getattr(e, "code", None) is None:
                    self._drop_client()
            except Exception as e:  # unreachable, refused, disk error: back off, keep the batch
                self._note_failure(e)
                self._drop_client()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self.stats.rows += len(batch.lines)
        self.stats.batches += 1
        self.stats.committed_seq = batch.last

    def _note_failure(self, e: BaseException) -> None:
        self.stats.insert_failures += 1
        self.stats.last_error = f"{type(e).__name__}: {str(e)[:300]}"
        log.warning("%s: insert failed (%s), retrying", self.stream, self.stats.last_error)

    def _drop_malformed(self, batch: Batch) -> bool:
        """Remove events that are not valid mesh events; True if any were removed.

        The lines are validated as they are (an event's JSON with stream, seq and domain
        spliced in, which the event decoder ignores): what ClickHouse refused is what is
        checked."""
        keep = []
        for line in batch.lines:
            try:
                decode(line)
                keep.append(line)
            except MalformedEvent:
                log.error("%s seq %d: malformed event dropped", self.stream, _seq_of(line))
        dropped = len(batch.lines) - len(keep)
        if not dropped:
            return False
        self.stats.malformed_dropped += dropped
        # the token stays the batch's first..last sequence: the filtering is deterministic
        batch.lines = keep
        kept = {id(line) for line in keep}
        batch.accounts = [line for line in batch.accounts if id(line) in kept]
        return True

    async def run(self) -> None:
        while self._seen < 0:
            try:
                self._seen = await asyncio.to_thread(self._recover)
                self.stats.committed_seq = self.stats.delivered_seq = self._seen
            except Exception as e:
                self._note_failure(e)
                self._drop_client()
                await asyncio.sleep(1.0)
        psub = await self._subscribe()
        pending: asyncio.Task[None] | None = None
        try:
            while True:
                batch = await self._collect(psub)
                if pending is not None:
                    await pending  # strictly one insert at a time per stream, in order
                    pending = None
                if batch.lines:
                    pending = asyncio.create_task(self._commit(batch))
                if self._broken:  # deliver again from the first event not held
                    self.stats.resubscribes += 1
                    await psub.close()
                    psub = await self._subscribe()
        except asyncio.CancelledError:
            if pending is not None:  # shutting down: an insert already in ClickHouse's hands
                pending.cancel()  # completes or not, atomically; the next start reads max(seq)
            raise
        except Exception:
            if pending is not None:
                # the supervisor re-reads max(seq) next: the in-flight insert must be settled
                # first, or its rows could be read as missing and inserted again
                await pending
            raise
        finally:
            with contextlib.suppress(Exception):
                await psub.close()


class Sink:
    """All four streams; `stats()` for metrics."""

    def __init__(
        self,
        nc: Nats,
        connect: Callable[[], Client],
        cfg: StoreConfig,
        streams: tuple[str, ...] = STREAMS,
    ) -> None:
        self.sinks = [StreamSink(nc, connect, cfg, s) for s in streams]

    def stats(self) -> list[StreamStats]:
        return [s.stats for s in self.sinks]

    def held(self) -> dict[str, int]:
        """Per stream, events taken from JetStream and not yet in the table: the part of
        the sink's lag that the consumers' own pending counts no longer show."""
        return {s.stream: max(0, s.received_seq() - s.stats.committed_seq) for s in self.sinks}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for s in self.sinks:
                tg.create_task(_supervise(s))


async def _supervise(sink: StreamSink) -> None:
    """Restart one stream's sink after an unexpected error; the others keep going."""
    while True:
        try:
            await sink.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            sink._note_failure(e)
            log.exception("%s: sink stopped, restarting in 1 s", sink.stream)
            sink._seen = -1  # re-read the high-water mark: held batches were lost
            sink._leftover = []
            await asyncio.sleep(1.0)

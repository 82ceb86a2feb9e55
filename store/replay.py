"""Replay from the store: a time range (plus filters) re-published in per-symbol order.

Rows come back `ORDER BY ts, stream, seq`: within one stream that is the order JetStream
stored them (so each symbol's order is kept), and across streams it is event time. By
default events go to `<prefix>.<original subject>` on core NATS (nothing live sees them);
`live=True` publishes them back into the live subjects through `Mesh.publish_many`, whose
Nats-Msg-Id = event_id lets JetStream drop any event it still holds (deduplication by
event id within each stream's duplicate window)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from mesh.catalog import BUILTIN
from mesh.client import Mesh
from mesh.events import Event, encode
from mesh.subjects import event_subject
from store.schema import TABLE

COLUMNS = (
    "event_type, payload, symbol, account, tenant, toString(event_id), correlation_id, "
    "causation_id, priority, timestamp, source, version, stream, seq"
)


PAGE = 2_000  # rows per query: replays of any size stay under the endpoint's row limit


def select(db: str, where: str = "") -> str:
    """One page of a range, keyset-paginated on the (timestamp, stream, seq) order."""
    extra = f" AND ({where})" if where else ""
    return (
        f"SELECT {COLUMNS} FROM {db}.{TABLE} WHERE ts >= {{since:DateTime64(9)}} AND "
        f"ts < {{until:DateTime64(9)}}{extra} AND (timestamp, stream, seq) > "
        "({after_t:Int64}, {after_s:String}, {after_q:UInt64}) "
        f"ORDER BY timestamp, stream, seq LIMIT {PAGE}"
    )


def to_event(r: Sequence[Any]) -> Event:
    """A row of COLUMNS back into the Event that was published."""
    return Event(
        event_type=r[0],
        payload=json.loads(r[1] or "{}"),
        symbol=r[2] or None,
        account=r[3] or None,
        tenant=r[4] or None,
        event_id=r[5],
        correlation_id=r[6],
        causation_id=r[7] or None,
        priority=r[8] or None,
        timestamp=int(r[9]),
        source=r[10],
        version=int(r[11]),
    )


def stored(
    client: Client, sql: str, parameters: dict[str, Any]
) -> Iterator[tuple[str, int, Event]]:
    """(stream, seq, event) for each row of a COLUMNS query, streamed block by block."""
    with client.query_row_block_stream(sql, parameters=parameters) as st:
        for block in st:
            for r in block:
                yield r[12], int(r[13]), to_event(r)


def events(
    client: Client,
    db: str,
    since: datetime,
    until: datetime,
    where: str = "",
    parameters: dict[str, Any] | None = None,
) -> Iterator[Event]:
    """Events of a time range in (time, stream, seq) order, page by page."""
    params: dict[str, Any] = {"since": since, "until": until, **(parameters or {})}
    after: tuple[int, str, int] = (-(2**63), "", 0)
    while True:
        params.update(after_t=after[0], after_s=after[1], after_q=after[2])
        rows = client.query(select(db, where), parameters=params).result_rows
        for r in rows:
            yield to_event(r)
        if len(rows) < PAGE:
            return
        last = rows[-1]
        after = (int(last[9]), str(last[12]), int(last[13]))


def chain_rows(client: Client, db: str, correlation_id: str) -> list[tuple[str, int, Event]]:
    sql = (
        f"SELECT {COLUMNS} FROM {db}.{TABLE} WHERE correlation_id = {{c:String}} "
        "ORDER BY ts, stream, seq LIMIT 1 BY event_id"
    )
    return list(stored(client, sql, {"c": correlation_id}))


async def replay(
    mesh: Mesh,
    found: Iterator[Event],
    *,
    prefix: str = "replay",
    live: bool = False,
    rate: float = 0.0,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    chunk: int = 500,
) -> int:
    """Publish `found`; return how many. `rate` events/s (0 = as fast as possible)."""
    n = 0
    start = time.monotonic()
    batch: list[Event] = []

    async def flush() -> None:
        if dry_run or not batch:
            return
        if live:
            await mesh.publish_many(batch)
        else:
            for e in batch:
                subject = event_subject(BUILTIN, e.event_type, e.symbol, e.account)
                await mesh.nc.publish(
                    f"{prefix}.{subject}",
                    encode(e),
                    headers={"Nats-Msg-Id": e.event_id, "Tm-Replay": "1"},
                )
            await mesh.nc.flush()
        batch.clear()

    for e in found:
        batch.append(e)
        n += 1
        if len(batch) >= (min(chunk, max(1, int(rate / 10))) if rate else chunk):
            await flush()
            if progress:
                progress(n)
            if rate:
                await asyncio.sleep(max(0.0, n / rate - (time.monotonic() - start)))
    await flush()
    if progress:
        progress(n)
    return n

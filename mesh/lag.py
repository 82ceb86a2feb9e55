"""Lag that lives outside JetStream, reported by the parts that know it.

`mesh streams` shows each JetStream consumer's backlog itself. Some backlogs are not
JetStream's: a Kafka consumer group's lag behind its partitions, for one. A part that has
such a backlog answers on `SUBJECT` (`serve`); `mesh streams` asks once and gathers every
answer that arrives within a short window (`gather`), so the core needs to know nothing
about the parts. A report may carry `figures` of its own (a rate, error and dead-letter
counts), which `mesh streams` prints beside the lag: what an operator looking at a backlog
asks next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client

SUBJECT = "tmmesh.lag"


class LagReport(msgspec.Struct, frozen=True):
    source: str  # who reports, e.g. "bridge default (kafka -> nats)"
    lag: dict[str, int]  # where -> events behind, e.g. {"orders/3": 12}
    # name -> value, e.g. {"per_s": 5012.0, "errors": 0, "dlq": 3}; older parts send none
    figures: dict[str, int | float] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(LagReport)


async def serve(
    nc: Client,
    source: str,
    lag: Callable[[], Awaitable[dict[str, int]]],
    figures: Callable[[], dict[str, int | float]] | None = None,
) -> Any:
    """Answer lag requests with `await lag()` (and `figures()`, if given) until the
    returned subscription is closed."""

    async def answer(msg: Any) -> None:
        report = LagReport(source, await lag(), figures() if figures is not None else {})
        await msg.respond(msgspec.json.encode(report))

    return await nc.subscribe(SUBJECT, cb=answer)


async def gather(nc: Client, window: float = 0.3) -> list[LagReport]:
    """Every report that arrives within `window` seconds; malformed answers are skipped."""
    inbox = nc.new_inbox()
    got: list[LagReport] = []

    async def collect(msg: Any) -> None:
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            got.append(_decoder.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(SUBJECT, b"", reply=inbox)
        await asyncio.sleep(window)  # scatter-gather: no one says how many will answer
    finally:
        await sub.unsubscribe()
    return sorted(got, key=lambda r: r.source)

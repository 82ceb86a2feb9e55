"""Reading stored events for one pattern: the last value per subject (snapshot) and
everything after a sequence or time (resume / replay). Direct gets, no consumers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import msgspec
from nats.aio.client import Client

from mesh import history, jsapi

_encode = msgspec.json.Encoder().encode


async def last_seq(nc: Client, stream: str) -> int:
    info = await jsapi.stream_info(nc, stream)
    return int(info["state"]["last_seq"]) if info else 0


async def last_per_subject(
    nc: Client, stream: str, pattern: str, limit: int = 10_000, timeout: float = 5.0
) -> AsyncIterator[tuple[int, bytes]]:
    """(seq, data) of the newest message of every subject matching `pattern`."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        req = {"multi_last": [pattern], "batch": limit}
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _encode(req), reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=timeout)
            hdr = msg.headers or {}
            status = hdr.get("Status")
            if status in ("204", "404"):
                return
            if status:
                raise jsapi.JetStreamApiError(
                    f"$JS.API.DIRECT.GET.{stream}", int(status), 0,
                    hdr.get("Description", "direct get failed"),
                )
            yield int(hdr["Nats-Sequence"]), msg.data
    finally:
        await sub.unsubscribe()


async def since(
    nc: Client, stream: str, pattern: str, *, after_seq: int | None = None,
    start_time: datetime | None = None,
) -> AsyncIterator[tuple[int, bytes]]:
    """(seq, data) of every stored message matching `pattern` after a seq or from a time."""
    start = None if after_seq is None else after_seq + 1
    async for m in history.scan(nc, stream, start_seq=start, start_time=start_time,
                                subject=pattern):
        yield m.seq, m.data

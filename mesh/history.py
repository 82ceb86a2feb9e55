"""Reading stored events straight from a stream (batched direct get).

For tools that look back (`mesh chain`, tests that verify what was stored): no consumer is
created, so reading history leaves no state on the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.client import Client

from mesh import jsapi

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class StoredMsg:
    stream: str
    seq: int
    subject: str
    headers: Mapping[str, str]
    data: bytes


async def scan(
    nc: Client,
    stream: str,
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    subject: str | None = None,
    batch: int = 1000,
    timeout: float = 10.0,
) -> AsyncIterator[StoredMsg]:
    """Every message of `stream` from a sequence or time up to its last one at call time."""
    info = await jsapi.stream_info(nc, stream)
    if info is None:
        raise jsapi.JetStreamApiError(
            f"$JS.API.STREAM.INFO.{stream}", 404, jsapi.STREAM_NOT_FOUND, "stream not found"
        )
    last = int(info["state"]["last_seq"])
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        req: dict[str, Any] = {"batch": batch}
        if subject:
            req["next_by_subj"] = subject
        if start_time is not None and start_seq is None:
            req["start_time"] = start_time.isoformat()
        else:
            req["seq"] = max(start_seq or 1, int(info["state"]["first_seq"]))
        while True:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _encode(req), reply=inbox)
            got = 0
            while True:
                msg = await sub.next_msg(timeout=timeout)
                hdr = msg.headers or {}
                status = hdr.get("Status")
                if status == "204":  # end of this batch
                    break
                if status == "404":  # nothing (more) to read
                    return
                if status:
                    raise jsapi.JetStreamApiError(
                        f"$JS.API.DIRECT.GET.{stream}",
                        int(status),
                        0,
                        hdr.get("Description", "direct get failed"),
                    )
                seq = int(hdr["Nats-Sequence"])
                if seq > last:
                    return
                got += 1
                yield StoredMsg(stream, seq, hdr.get("Nats-Subject", ""), hdr, msg.data)
            if got == 0 or seq >= last:
                return
            req = {"batch": batch, "seq": seq + 1}
            if subject:
                req["next_by_subj"] = subject
    finally:
        await sub.unsubscribe()

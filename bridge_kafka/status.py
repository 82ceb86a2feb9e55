"""One bridge's status, from however many processes run it (`mesh bridge status`).

A bridge runs as one process for both directions, or as one process per direction
(`mesh bridge run --direction`, decisions §22). Every process answers on the bridge's
status subject with its own status, which says which directions it `serves` and which
its config file has rules for (`configured`). `gather` asks once and collects answers
until every configured direction is served (or the time is up); `merge` makes them one
status, and says which configured direction no process answered for.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client

from bridge_kafka.config import DIRECTIONS, status_subject

# Worst first: the merged health is the worst of the processes'.
_SEVERITY = ("failed", "degraded", "ok")


def _covered(replies: list[dict[str, Any]]) -> bool:
    served = {d for r in replies for d in r.get("serves", ())}
    return all(set(r.get("configured", ())) <= served for r in replies)


async def gather(nc: Client, name: str, timeout: float) -> list[dict[str, Any]]:
    """The statuses of the processes of bridge `name` that answered within `timeout`;
    returns as soon as every configured direction has answered."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    replies: list[dict[str, Any]] = []
    try:
        await nc.publish(status_subject(name), b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (replies and _covered(replies)):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            replies.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return replies


def merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One status from the processes' (at least one): each direction from the process
    that serves it; health the worst of theirs, `degraded` as well when a configured
    direction has no process answering (`health.missing`)."""
    served = {d: r for r in replies for d in r.get("serves", ())}
    configured = [d for d in DIRECTIONS if any(d in r.get("configured", ()) for r in replies)]
    missing = [d for d in configured if d not in served]
    healths = [r["health"] for r in replies]
    worst = min(healths, key=lambda h: _SEVERITY.index(h["status"]))
    status = worst["status"]
    if missing and status == "ok":
        status = "degraded"
    health: dict[str, Any] = {
        "status": status,
        "down": sorted({side for h in healths for side in h["down"]}),
    }
    if failures := [h["failure"] for h in healths if h.get("failure")]:
        health["failure"] = "; ".join(failures)
    for side in ("kafka", "nats"):
        health[side] = next((h[side] for h in healths if h[side] != "up"), "up")
    if missing:
        health["missing"] = missing
    return {
        "name": replies[0]["name"],
        "health": health,
        "processes": len(replies),
        "uptime_s": min(r["uptime_s"] for r in replies),
        "cpu_s": round(sum(r["cpu_s"] for r in replies), 6),
        "serves": [d for d in DIRECTIONS if d in served],
        "configured": configured,
        **{d: served[d][d] for d in DIRECTIONS if d in served},
    }

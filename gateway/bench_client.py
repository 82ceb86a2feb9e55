"""One load-generating process of `mesh bench gateway`: K WebSocket clients.

Protocol with the parent on stdin/stdout: prints `ready` once every client is subscribed,
reads `go <t0> <t1>` (epoch seconds: the measured window), prints one JSON line of
results after t1 + grace. Frames are decoded with a minimal msgspec schema (only what is
measured), so the clients spend as little CPU as possible."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

import jwt
import msgspec
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection, connect


class Ev(msgspec.Struct):
    priority: str = ""
    timestamp: int = 0
    event_id: str = ""
    symbol: str | None = None


class Item(msgspec.Struct):
    event: Ev | None = None
    conflated: bool = False


class Frame(msgspec.Struct):
    type: str
    event: Ev | None = None
    events: list[Item] | None = None
    conflated: bool = False
    code: int | None = None


decode = msgspec.json.Decoder(Frame).decode
PRIOS = ("critical", "high", "standard", "background")
# The publisher's last event: a critical one with this symbol. Critical events reach a
# client in order, so a client that has it has every critical event published before.
END = "ENDMARK"


class Stats:
    def __init__(self) -> None:
        self.hist = {p: HdrHistogram(1, 600_000_000, 2) for p in PRIOS}  # microseconds
        self.delivered = 0
        self.conflated = 0
        self.critical_ids: list[set[str]] = []
        self.closed: dict[str, int] = {}
        self.finished = 0  # clients that saw the end marker
        self.all_finished = asyncio.Event()
        self.total = 0
        self.t0 = float("inf")
        self.t1 = float("inf")


async def run_client(url: str, token: str, account: str, stats: Stats, ready: asyncio.Event,
                     ready_count: list[int], total: int) -> None:
    crit: set[str] = set()
    stats.critical_ids.append(crit)
    subscribed = False
    try:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                           max_size=None, max_queue=64, open_timeout=120) as ws:
            await ws.recv()
            subs = [{"op": "subscribe", "id": "p", "channel": "prices"},
                    {"op": "subscribe", "id": "o", "channel": "orders", "account": account},
                    {"op": "subscribe", "id": "r", "domain": "risk"}]
            for s in subs:
                await ws.send(json.dumps(s))
            ok = 0
            while ok < len(subs):
                if b'"subscribed"' in (m := await ws.recv(decode=False)):
                    ok += 1
                elif b'"error"' in m:
                    raise RuntimeError(m.decode())
            subscribed = True
            ready_count[0] += 1
            if ready_count[0] == total:
                ready.set()
            await consume(ws, stats, crit)
    except Exception as e:
        if not ready.is_set() and not subscribed:
            # A client that failed to connect counts as settled, or `ready` never comes.
            ready_count[0] += 1
            if ready_count[0] == total:
                ready.set()
        key = type(e).__name__
        rcvd = getattr(e, "rcvd", None)
        if rcvd is not None:
            key = f"close {rcvd.code}"
        stats.closed[key] = stats.closed.get(key, 0) + 1


async def consume(ws: ClientConnection, stats: Stats, crit: set[str]) -> None:
    hist = stats.hist
    while True:
        raw = await ws.recv(decode=False)
        now = time.time_ns()
        f = decode(raw)
        if f.type == "event" and f.event is not None:
            items = [(f.event, f.conflated)]
        elif f.type == "batch" and f.events is not None:
            items = [(i.event, i.conflated) for i in f.events if i.event is not None]
        elif f.type == "ping":
            await ws.send('{"op":"pong"}')
            continue
        else:
            continue
        in_window = stats.t0 <= now / 1e9 <= stats.t1
        for ev, conflated in items:
            if ev.priority == "critical":
                if ev.symbol == END:
                    stats.finished += 1
                    if stats.finished == stats.total:
                        stats.all_finished.set()
                    continue
                crit.add(ev.event_id)
            if not in_window:
                continue
            stats.delivered += 1
            stats.conflated += conflated
            h = hist.get(ev.priority)
            if h is not None:
                h.record_value(max(1, (now - ev.timestamp) // 1000))


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--accounts", type=int, default=50)
    p.add_argument("--grace", type=float, default=30.0, help="wait for the end marker")
    a = p.parse_args()
    stats = Stats()
    stats.total = a.count
    ready = asyncio.Event()
    ready_count = [0]
    now = int(time.time())
    tasks = []
    for i in range(a.first, a.first + a.count):
        account = f"ACC{i % a.accounts}"
        token = jwt.encode({"sub": f"user{i}", "roles": ["trader", "risk_officer"],
                            "account": account, "iat": now, "exp": now + 3600,
                            "iss": "trademaster", "aud": "mesh-gateway"},
                           a.secret, algorithm="HS256", headers={"kid": "dev"})
        tasks.append(asyncio.create_task(
            run_client(a.url, token, account, stats, ready, ready_count, a.count)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # spread the handshakes a little
    await ready.wait()
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    _, t0, t1 = line.split()
    stats.t0, stats.t1 = float(t0), float(t1)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stats.all_finished.wait(),
                               max(0.0, stats.t1 - time.time()) + a.grace)
    for t in tasks:
        t.cancel()
    out = {
        "delivered": stats.delivered,
        "conflated": stats.conflated,
        "hist": {k: h.encode().decode() for k, h in stats.hist.items()},
        "critical_counts": [len(s) for s in stats.critical_ids],
        "unfinished": stats.total - stats.finished,
        "closed": stats.closed,
        "finished": stats.finished,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

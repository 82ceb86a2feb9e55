"""One load-generating process of `mesh bench gateway`: K WebSocket clients.

Protocol with the parent on stdin/stdout: prints `ready` once every client is subscribed
(or has failed), reads `go <t0> <t1>` (epoch seconds: the measured window), prints one
JSON line of results after t1 + grace.

The clients share the machine with the gateway they measure, so they must cost as
little CPU as possible. The `websockets` client spent ~25 us per frame (its own task
switches, per-frame objects and a reassembly queue): three client processes took ~80%
of a core at 1,000 clients. Here each connection is a bare `asyncio.Protocol`: the
handshake is written by hand, server frames (never masked) are cut out of the receive
buffer in `data_received` and decoded with a minimal msgspec schema (only what is
measured); one clock reading per received chunk. Handshakes are paced by a semaphore
(`--inflight`) so 10,000 clients connect without a thundering herd of timeouts.

`mesh bench gateway --client go` runs gateway/bench_client_go/ instead: the same flags,
protocol and result line (latencies as `lat_us`: [[microseconds, count], ...] per
priority), in Go."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from array import array
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import jwt
import msgspec

from gateway.gcwatch import WATCH
from mesh import loop


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
    state: str | None = None
    event: Ev | None = None
    events: list[Item] | None = None
    conflated: bool = False
    code: str | None = None
    message: str | None = None


decode = msgspec.json.Decoder(Frame).decode
PRIOS = ("critical", "high", "standard", "background")
# The publisher's last event: a critical one with this symbol. Critical events reach a
# client in order, so a client that has it has every critical event published before.
END = "ENDMARK"
PONG = b'{"op":"pong"}'


def masked_frame(opcode: int, data: bytes) -> bytes:
    """A client frame (clients must mask; the XOR is done on one big int)."""
    key = os.urandom(4)
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    k = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")
    return head + key + body


class Stats:
    def __init__(self, total: int) -> None:
        # Raw latencies (ns) per priority, put into histograms at the end: recording into
        # an HdrHistogram from Python costs several us per event, an append ~50 ns.
        self.lat: dict[str, array[int]] = {p: array("q") for p in PRIOS}
        self.delivered = 0
        self.conflated = 0
        self.critical_counts: list[int] = []
        self.closed: dict[str, int] = {}
        self.finished = 0  # clients that saw the end marker
        self.all_finished = asyncio.Event()
        self.total = total
        self.settled = 0  # subscribed or failed
        self.ready = asyncio.Event()
        self.t0 = float("inf")
        self.t1 = float("inf")

    def settle(self) -> None:
        self.settled += 1
        if self.settled == self.total:
            self.ready.set()

    def close(self, key: str) -> None:
        self.closed[key] = self.closed.get(key, 0) + 1


class Client(asyncio.Protocol):
    def __init__(self, stats: Stats, host: str, path: str, token: str, account: str,
                 gate: asyncio.Semaphore) -> None:
        self.stats = stats
        self.host = host
        self.path = path
        self.token = token
        self.account = account
        self.gate = gate
        self.gated = True
        self.buf = bytearray()
        self.upgraded = False
        self.subscribed = 0
        self.crit: set[str] = set()
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.lost = asyncio.Event()
        self.frag = b""
        self.done = False  # saw the end marker

    def ungate(self) -> None:
        if self.gated:
            self.gated = False
            self.gate.release()
            self.stats.settle()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                         f"Authorization: Bearer {self.token}\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is not None:
            self.stats.close(f"close {self.close_code}")
        else:
            self.stats.close("ConnectionLost" if self.upgraded else "HandshakeFailed")
        self.ungate()
        self.lost.set()

    def send(self, text: bytes) -> None:
        assert self.transport is not None
        self.transport.write(masked_frame(0x1, text))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self.upgraded = True
            for op in ({"op": "subscribe", "id": "p", "channel": "prices"},
                       {"op": "subscribe", "id": "o", "channel": "orders",
                        "account": self.account},
                       {"op": "subscribe", "id": "r", "domain": "risk"}):
                self.send(json.dumps(op).encode())
        now = time.time_ns()  # one clock reading per chunk: the frames in it arrived together
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, ln = buf[pos], buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n - pos < hl + ln:
                break
            payload = bytes(buf[pos + hl : pos + hl + ln])
            pos += hl + ln
            opcode = b0 & 0x0F
            if not b0 & 0x80:  # fragment: keep until the final one
                self.frag += payload
                continue
            if opcode == 0:
                payload, self.frag = self.frag + payload, b""
            if opcode in (0, 1):
                self.frame(payload, now)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            elif opcode == 9:
                assert self.transport is not None
                self.transport.write(masked_frame(0xA, payload))
        if pos:
            del buf[:pos]

    def frame(self, raw: bytes, now: int) -> None:
        f = decode(raw)
        t = f.type
        if t == "event" and f.event is not None:
            self.events(((f.event, f.conflated),), now)
        elif t == "batch" and f.events is not None:
            self.events([(i.event, i.conflated) for i in f.events if i.event is not None], now)
        elif t == "ping":
            self.send(PONG)
        elif t == "status" and f.state == "subscribed":
            self.subscribed += 1
            if self.subscribed == 3:
                self.ungate()
        elif t == "error":
            self.stats.close(f"error {f.code}")
            assert self.transport is not None
            self.transport.close()

    def events(self, items: Any, now: int) -> None:
        stats = self.stats
        lat = stats.lat
        in_window = stats.t0 <= now / 1e9 <= stats.t1
        for ev, conflated in items:
            if ev.priority == "critical":
                if ev.symbol == END:
                    self.done = True
                    stats.finished += 1
                    if stats.finished == stats.total:
                        stats.all_finished.set()
                    continue
                self.crit.add(ev.event_id)
            if not in_window:
                continue
            stats.delivered += 1
            stats.conflated += conflated
            a = lat.get(ev.priority)
            if a is not None:
                a.append(now - ev.timestamp)


def lat_us(ns: array[int]) -> list[list[int]]:
    """Latencies (ns) as [[microseconds, count], ...] (at least 1 us, ascending): the
    result format of both clients, put into HdrHistograms by gateway/bench.py."""
    counts = Counter(max(1, v // 1000) for v in ns)
    return [[us, counts[us]] for us in sorted(counts)]


async def open_client(url: str, token: str, account: str, stats: Stats,
                      gate: asyncio.Semaphore, timeout: float) -> Client | None:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    await gate.acquire()
    loop = asyncio.get_running_loop()
    client = Client(stats, f"{host}:{port}", u.path or "/", token, account, gate)
    try:
        await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout)
    except (OSError, TimeoutError) as e:
        stats.close(type(e).__name__)
        client.ungate()
        return None
    return client


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--accounts", type=int, default=50)
    p.add_argument("--inflight", type=int, default=100,
                   help="handshakes+subscribes in flight at once")
    p.add_argument("--grace", type=float, default=30.0, help="wait for the end marker")
    p.add_argument("--sched", choices=["other", "batch"], default="other")
    a = p.parse_args()
    if a.sched == "batch":
        # SCHED_BATCH turns off wake-up preemption for this process: a client woken by
        # one frame does not preempt the gateway in the middle of its send pass; it
        # still gets its fair share of CPU, and receipt time is still taken when it reads.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    WATCH.install()
    stats = Stats(a.count)
    gate = asyncio.Semaphore(a.inflight)
    now = int(time.time())
    opens = []
    for i in range(a.first, a.first + a.count):
        account = f"ACC{i % a.accounts}"
        token = jwt.encode({"sub": f"user{i}", "roles": ["trader", "risk_officer"],
                            "account": account, "iat": now, "exp": now + 3600,
                            "iss": "trademaster", "aud": "mesh-gateway"},
                           a.secret, algorithm="HS256", headers={"kid": "dev"})
        opens.append(asyncio.create_task(open_client(a.url, token, account, stats, gate, 120)))
    await stats.ready.wait()
    clients = [c for c in await asyncio.gather(*opens) if c is not None]
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    _, t0, t1 = line.split()
    stats.t0, stats.t1 = float(t0), float(t1)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stats.all_finished.wait(),
                               max(0.0, stats.t1 - time.time()) + a.grace)
    connected = [c for c in clients if not c.lost.is_set() and c.subscribed == 3]
    out = {
        "delivered": stats.delivered,
        "conflated": stats.conflated,
        "lat_us": {k: lat_us(v) for k, v in stats.lat.items()},
        # Only clients holding the end marker can be checked for missing critical events.
        "critical_counts": [len(c.crit) for c in clients if c.done],
        "connected_at_end": len(connected),
        "unfinished": stats.total - stats.finished,
        "closed": stats.closed,
        "finished": stats.finished,
        "gc": [r for r in WATCH.recent if stats.t0 <= r[0] <= stats.t1],
    }
    print(json.dumps(out), flush=True)
    # (returns: the parent kills this process once it has read the line)


if __name__ == "__main__":
    # BENCH_CLIENT_PROFILE=<prefix>: cProfile this process into <prefix>.<pid>.
    if prof := os.environ.get("BENCH_CLIENT_PROFILE"):
        import cProfile

        cProfile.run("loop.run(main())", f"{prof}.{os.getpid()}")
    else:
        # uvloop (as every mesh command): the receive path per frame is C, not the
        # selector loop's Python.
        loop.run(main())

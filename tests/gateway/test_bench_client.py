"""The two load generators of `mesh bench gateway`, gateway/bench_client.py and
gateway/bench_client_go/, run the same way and must give the same result line: against
a real gateway (events published through the mesh), against a scripted WebSocket server
(fragments, 16/64-bit lengths, pings, error and close frames, a refused handshake, a
payload whose keys look like the event's own), and against a port nobody listens on.
The Go client's JSON scanner has its own unit tests (`go test`), run from here."""

from __future__ import annotations

import array
import asyncio
import base64
import fcntl
import hashlib
import json
import os
import struct
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway import bench
from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer, free_port
from tests.gateway.conftest import ROOT, start_gateway
from tests.gateway.test_queues import scrape
from tests.helpers import eventually, settled

SECRET = "bench-client-tests-secret-0123456789abcdef"
# Keys named like the event's own fields, escaped quotes and brackets in a string: the
# clients must read the event's fields, never these.
TRICKY = {"priority": "critical", "timestamp": 1, "symbol": "ENDMARK", "event_id": "not-me",
          "note": 'a "quoted" } ] { string \\', "nested": {"priority": "background",
                                                          "list": [{"symbol": "ENDMARK"}]}}


@pytest.fixture(scope="session")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Go is part of this machine's toolchain (the default load generator is in Go): its
    # absence is a failure, not a skip.
    return bench.build_go_client(tmp_path_factory.mktemp("bench-client-go"))


@pytest.fixture(params=["python", "go"])
def client_cmd(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "go":
        return [str(request.getfixturevalue("go_binary"))]
    return [sys.executable, "-m", "gateway.bench_client"]


class BenchClient:
    """One client process, driven as gateway/bench.py drives it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cmd: list[str], url: str, count: int, grace: float = 5.0
                    ) -> BenchClient:
        proc = await asyncio.create_subprocess_exec(
            *cmd, "--url", url, "--secret", SECRET, "--first", "0", "--count", str(count),
            "--grace", str(grace), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, limit=16 * 1024 * 1024)
        return cls(proc)

    async def line(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert raw, "the client process ended early"
        return raw.decode().strip()

    def _unread_stdin(self) -> int:
        assert self.proc.stdin is not None
        if self.proc.stdin.is_closing():
            # The process has closed its end of the pipe: it has ended (a client can print
            # its result and exit at once when the window is already over, grace 0), and
            # asyncio then closes the pipe, whose fileno() would raise ValueError. Nothing
            # is left to wait for; the result line (or its absence) tells the rest.
            return 0
        fd = self.proc.stdin.get_extra_info("pipe").fileno()
        n = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, n, True)
        return n[0]

    async def go(self, t0: float, t1: float) -> None:
        """Sends the window and waits until the process has read it (the pipe is empty):
        what arrives before that is outside the window by definition."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {t0} {t1}\n".encode())
        await self.proc.stdin.drain()
        await eventually(lambda: self._unread_stdin() == 0, what="the client read `go`")

    async def result(self, timeout: float = 60) -> dict[str, Any]:
        return json.loads(await self.line(timeout))  # type: ignore[no-any-return]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def clients() -> AsyncIterator[list[BenchClient]]:
    started: list[BenchClient] = []
    yield started
    for c in started:
        await c.stop()


def total(rows: list[list[int]]) -> int:
    return sum(n for _, n in rows)


# -- against a real gateway ----------------------------------------------------------------


async def metric_sum(g: Any, prefix: str) -> float:
    m = await asyncio.to_thread(scrape, g)
    return sum(v for k, v in m.items() if k.startswith(prefix))


async def test_against_gateway(client_cmd: list[str], clients: list[BenchClient],
                               nats_server: NatsServer, mesh: Mesh, tmp_path: Path,
                               tag: str) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
heartbeat_s = 10
[gateway.auth]
hs256_secret = "{SECRET}"
[gateway.limits]
connects_per_s_per_ip = 100000.0
connect_burst_per_ip = 100000
""")
    g = start_gateway(nats_server.url, cfg)
    try:
        c = await BenchClient.start(client_cmd, g.url, count=3)  # accounts ACC0..ACC2
        clients.append(c)
        assert await c.line() == "ready"
        now = time.time()
        await c.go(now - 60, now + 60)

        async def published(priority: str, n: int) -> None:
            """The gateway has handed n events of this priority to the sockets."""
            name = f'gateway_events_out_total{{priority="{priority}"}}'
            sent = await settled(lambda: metric_sum(g, name), lambda v: v >= n, 20)
            assert sent == n, f"{priority}: {sent} events sent, {n} expected"

        # High: 5 prices (every client), 3 orders of ACC1 (client 1), 1 of ACC7 (nobody).
        await mesh.publish_many(
            [Event(event_type="PRICE_UPDATE", symbol=f"{tag}P{k}", payload=TRICKY)
             for k in range(5)]
            + [Event(event_type="ORDER_FILLED", account="ACC1", symbol=tag,
                     payload={"qty": 100, **TRICKY}) for _ in range(3)]
            + [Event(event_type="ORDER_FILLED", account="ACC7", symbol=tag, payload=TRICKY)])
        await published("high", 5 * 3 + 3)
        # Critical: 2 margin calls (every client: the risk domain).
        await mesh.publish_many([Event(event_type="MARGIN_CALL", account=f"ACC{k}",
                                       symbol=tag, payload=TRICKY) for k in range(2)])
        await published("critical", 2 * 3)
        # Every frame above is on the sockets: the end marker comes after it on each.
        await mesh.publish(Event(event_type="MARGIN_CALL", symbol="ENDMARK", account="ACC0"))
        r = await c.result()
    finally:
        g.stop()
    assert r["delivered"] == 5 * 3 + 3 + 2 * 3
    assert set(r["lat_us"]) == {"critical", "high", "standard", "background"}
    assert total(r["lat_us"]["high"]) == 18
    assert total(r["lat_us"]["critical"]) == 6
    assert r["lat_us"]["standard"] == r["lat_us"]["background"] == []
    for rows in r["lat_us"].values():
        us = [v for v, _ in rows]
        assert us == sorted(set(us))
        assert all(1 <= v < 60_000_000 for v in us)
    assert r["critical_counts"] == [2, 2, 2]
    assert r["connected_at_end"] == 3
    assert (r["finished"], r["unfinished"], r["conflated"]) == (3, 0, 0)
    assert r["closed"] == {}
    # The client's own collector pauses in the window (the Python client's; the Go one
    # reports none): how many depends on the machine's load, not on the protocol.
    assert isinstance(r["gc"], list)


# -- against a scripted server ---------------------------------------------------------------


def server_frame(opcode: int, data: bytes, fin: bool = True) -> bytes:
    """A server frame (never masked), 7/16/64-bit length as the size needs."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(data)
    if n < 126:
        head = bytes((b0, n))
    elif n < 65536:
        head = bytes((b0, 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 127)) + struct.pack("!Q", n)
    return head + data


async def client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, payload) of a client frame, which must be final and masked."""
    b0, b1 = await reader.readexactly(2)
    assert b0 & 0x80, "client frames are not fragmented"
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4)
    data = await reader.readexactly(n)
    return b0 & 0x0F, bytes(c ^ key[i % 4] for i, c in enumerate(data))


def event(priority: str, event_id: str, symbol: str = "SYM1", **extra: Any) -> dict[str, Any]:
    """An event as the gateway sends it, payload first (its keys look like these), with a
    timestamp 5 ms ago: the latency measured must be at least 5,000 us."""
    return {"event_type": "X", "payload": {**TRICKY, **extra}, "symbol": symbol,
            "event_id": event_id, "priority": priority,
            "timestamp": time.time_ns() - 5_000_000, "source": "s", "version": 1}


def event_frame(ev: dict[str, Any], conflated: bool = False) -> dict[str, Any]:
    head: dict[str, Any] = {"type": "event", **({"conflated": True} if conflated else {})}
    return {**head, "pattern": "p", "stream": "TM_X", "seq": 1, "event": ev}


def text(obj: Any, compact: bool = True) -> bytes:
    # Compact as the gateway writes; some frames with spaces, which JSON allows.
    return server_frame(0x1, json.dumps(obj, separators=(",", ":") if compact else None)
                        .encode())


async def test_protocol_against_scripted_server(client_cmd: list[str],
                                                clients: list[BenchClient]) -> None:
    """4 clients: user0 gets every kind of frame and the end marker; user1 an error
    frame; user2 a close frame (4002); user3's handshake is refused."""
    go_read = asyncio.Event()
    failures: list[BaseException] = []
    seen: dict[str, dict[str, Any]] = {}
    writers: list[asyncio.StreamWriter] = []

    async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request, *lines = head.split("\r\n")
        headers = {k.lower(): v for k, v in (ln.split(": ", 1) for ln in lines if ln)}
        token = headers["authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="mesh-gateway",
                            issuer="trademaster")
        seen[claims["sub"]] = {"request": request, "headers": headers, "claims": claims,
                               "jwt_header": jwt.get_unverified_header(token)}
        if claims["sub"] == "user3":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return "user3"
        accept = base64.b64encode(hashlib.sha1(
            headers["sec-websocket-key"].encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        ).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                     .encode())
        seen[claims["sub"]]["ops"] = [json.loads((await client_frame(reader))[1])
                                      for _ in range(3)]
        # The first "subscribed" in two fragments with a ping between them: the ping must
        # be answered with a masked pong carrying its payload.
        st = json.dumps({"type": "status", "state": "subscribed", "id": "p"}).encode()
        writer.write(server_frame(0x1, st[:10], fin=False) + server_frame(0x9, b"hb")
                     + server_frame(0x0, st[10:]))
        assert await client_frame(reader) == (0xA, b"hb")
        for sid in ("o", "r"):
            writer.write(text({"type": "status", "state": "subscribed", "id": sid}))
        await go_read.wait()
        # A heartbeat: the answer is the text {"op":"pong"}.
        writer.write(text({"type": "ping", "t": 1}, compact=False))
        op, data = await client_frame(reader)
        assert (op, json.loads(data)) == (0x1, {"op": "pong"})
        return str(claims["sub"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            user = await upgrade(reader, writer)
            if user == "user0":
                frames = [
                    # 16-bit length
                    text(event_frame(event("high", "h1"))),
                    # 64-bit length, conflated
                    text(event_frame(event("high", "h2", blob="x" * 70_000), conflated=True)),
                    # a batch: critical c1, standard (conflated item), background, null
                    text({"type": "batch", "events": [
                        event_frame(event("critical", "c1")),
                        event_frame(event("standard", "s1"), conflated=True),
                        event_frame(event("background", "b1")),
                        {"type": "event", "event": None}]}, compact=False),
                    text(event_frame(event("critical", "c2"))),
                    text(event_frame(event("critical", "c1"))),  # again: still 2 ids
                    text({"type": "status", "state": "unsubscribed", "id": "x"}),
                    text(event_frame(event("critical", "end", symbol="ENDMARK"))),
                ]
                assert len(frames[0]) > 130
                assert frames[0][1] == 126
                assert frames[1][1] == 127
                writer.write(b"".join(frames))
                await writer.drain()
            elif user == "user1":
                writer.write(text({"type": "error", "code": "rate_limited",
                                   "message": 'slow "down"'}))
                await writer.drain()
                assert await reader.read() == b"", "the client closes after an error frame"
            elif user == "user2":
                writer.write(server_frame(0x8, struct.pack("!H", 4002) + b"bye"))
                await writer.drain()
                writer.close()
        except BaseException as e:
            failures.append(e)
            raise

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        c = await BenchClient.start(client_cmd, f"ws://127.0.0.1:{port}/ws", count=4,
                                    grace=0.5)
        clients.append(c)
        assert await c.line() == "ready"
        now = time.time()
        await c.go(now - 60, now + 2.0)  # user1..3 never finish: the result at t1 + grace
        go_read.set()
        r = await c.result()
    finally:
        for w in writers:
            w.close()
        server.close()
    assert not failures, failures
    assert r["delivered"] == 7  # h1, h2, c1, s1, b1, c2, c1 again; not the end marker
    assert r["conflated"] == 2
    counts = {k: total(v) for k, v in r["lat_us"].items()}
    assert counts == {"critical": 3, "high": 2, "standard": 1, "background": 1}
    for rows in r["lat_us"].values():
        assert all(5_000 <= us < 60_000_000 for us, _ in rows), rows
    assert r["critical_counts"] == [2]
    assert r["connected_at_end"] == 1
    assert (r["finished"], r["unfinished"]) == (1, 3)
    assert r["closed"] == {"error rate_limited": 1, "ConnectionLost": 1, "close 4002": 1,
                           "HandshakeFailed": 1}
    # The client's own collector pauses in the window (the Python client's; the Go one
    # reports none): how many depends on the machine's load, not on the protocol.
    assert isinstance(r["gc"], list)
    # The handshake and the subscriptions, as the Python client has always sent them.
    now_s = int(time.time())
    for i in range(4):
        s = seen[f"user{i}"]
        assert s["request"] == "GET /ws HTTP/1.1"
        assert s["headers"]["host"] == f"127.0.0.1:{port}"
        assert s["headers"]["upgrade"] == "websocket"
        assert s["headers"]["sec-websocket-version"] == "13"
        assert len(base64.b64decode(s["headers"]["sec-websocket-key"])) == 16
        assert s["jwt_header"] == {"alg": "HS256", "kid": "dev", "typ": "JWT"}
        claims = s["claims"]
        assert list(claims) == ["sub", "roles", "account", "iat", "exp", "iss", "aud"]
        assert claims["roles"] == ["trader", "risk_officer"]
        assert claims["account"] == f"ACC{i}"
        assert claims["exp"] - claims["iat"] == 3600
        assert abs(claims["iat"] - now_s) < 120
        if i < 3:
            assert s["ops"] == [
                {"op": "subscribe", "id": "p", "channel": "prices"},
                {"op": "subscribe", "id": "o", "channel": "orders", "account": f"ACC{i}"},
                {"op": "subscribe", "id": "r", "domain": "risk"}]


async def test_connect_refused(client_cmd: list[str], clients: list[BenchClient]) -> None:
    c = await BenchClient.start(client_cmd, f"ws://127.0.0.1:{free_port()}/ws", count=2,
                                grace=0)
    clients.append(c)
    assert await c.line() == "ready"
    now = time.time()
    await c.go(now - 1, now)
    r = await c.result()
    assert r["closed"] == {"ConnectionRefusedError": 2}
    assert (r["delivered"], r["connected_at_end"], r["finished"], r["unfinished"]) == (0, 0, 0, 2)
    assert r["critical_counts"] == []


def test_go_scanner_unit_tests(go_binary: Path) -> None:
    """scan_test.go: the JSON scanner (payload keys named like the event's own, escapes,
    nesting, bad JSON), the JWT against PyJWT's bytes, masking."""
    go = bench.go_tool()
    assert go is not None
    done = subprocess.run(
        [go, "test", "-count=1", "."], cwd=bench.GO_CLIENT_DIR, capture_output=True, text=True,
        timeout=600, env=bench.go_env())
    assert done.returncode == 0, done.stdout + done.stderr

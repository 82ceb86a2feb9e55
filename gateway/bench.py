"""`mesh bench gateway`: N WebSocket clients in separate processes, a mixed publish load,
and one JSON line of results.

Everything runs on loopback: a nats-server with the project's streams, `--gateway-procs`
gateway processes sharing one port with SO_REUSEPORT (default 2, one per core; Uvicorn
unless `--server hypercorn`), `--procs` client processes and the publisher in this
process. The client processes run gateway/bench_client_go/ (`--client go`, built with
`go build` into the run's temporary directory; Go's build cache makes reruns fast) or
gateway/bench_client.py (`--client python`): the same flags, protocol and result line,
latencies as [[microseconds, count], ...] per priority, put into HdrHistograms here.
Each client subscribes to all prices, its account's orders and all risk events, so one
published price is delivered to every client, an order to clients/accounts of them, a
critical risk event to every client.

Mix per second of `--rate`: 90% PRICE_UPDATE over `--symbols` symbols, 8% order events,
2% critical (MARGIN_CALL). Latency is publish timestamp -> client receipt, per priority.
dropped_critical counts, over clients that stayed connected, critical events published
in the window that never arrived (it must be 0)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from mesh import provision
from mesh.bench import host
from mesh.client import Mesh
from mesh.config import REPO_ROOT
from mesh.events import Event
from mesh.server import NatsServer, free_port

PRIOS = ("critical", "high", "standard", "background")
SECRET = "bench-secret-0123456789abcdef0123456789"
GO_CLIENT_DIR = REPO_ROOT / "gateway" / "bench_client_go"


class GoMissing(RuntimeError):
    """`--client go` without a Go toolchain."""


def go_tool() -> str | None:
    """The `go` command: on PATH, else Go's default install location."""
    found = shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    return found


def go_env() -> dict[str, str]:
    """The environment of every `go` command on the client: this toolchain only, nothing
    downloaded, nothing written into the repository."""
    return {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off",
            "GOFLAGS": "-buildvcs=false", "GOWORK": "off"}


def build_go_client(out: Path) -> Path:
    """`go build` of gateway/bench_client_go/ into `out` (nothing is written into the
    repository; the standard library only, so nothing is downloaded: GOPROXY=off)."""
    go = go_tool()
    if go is None:
        raise GoMissing("mesh bench gateway --client go needs Go (https://go.dev/dl/, "
                        "`go` on PATH); or use --client python")
    binary = out / "bench-client"
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_CLIENT_DIR,
                          env=go_env(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"go build in {GO_CLIENT_DIR} failed:\n{done.stderr}")
    return binary


GO_DEFAULT_PROCS = 2


def client_procs(clients: int, client: str) -> int:
    """The default number of client processes."""
    if client == "go":
        return GO_DEFAULT_PROCS
    return max(2, min(8, clients // 500 + 1))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of a process so far, all its threads
    (/proc/<pid>/status counts the main thread only: a Go client does its work on
    others)."""
    n = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    n += int(line.split()[1])
        except OSError:
            pass  # the thread ended
    return n


def _totals(read: Callable[[int], float], pids: dict[str, list[int]]) -> dict[str, float]:
    """`read` (CPU seconds, context switches) summed over each group of processes."""
    return {k: sum(map(read, v)) for k, v in pids.items()}


def _metrics_once(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read()
    except OSError:
        return {}  # a gateway still closing 10,000 sockets may not answer: report the rest
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def _metrics(port: int, procs: int) -> dict[str, float]:
    """Counters summed over the gateway processes. Behind SO_REUSEPORT the kernel picks
    the process per connection, so ask (new connection each time) until every instance
    (gateway_info{instance=...}) has answered once."""
    seen: dict[str, dict[str, float]] = {}
    for _ in range(20 * procs):
        m = _metrics_once(port)
        inst = next((k for k in m if k.startswith("gateway_info")), None)
        if inst is None:
            break
        seen.setdefault(inst, m)
        if len(seen) == procs:
            break
    total: dict[str, float] = {}
    for m in seen.values():
        for k, v in m.items():
            total[k] = total.get(k, 0.0) + v
    total["instances_answered"] = len(seen)
    return total


def _gc_in_window(port: int, procs: int, t0: float, t1: float) -> dict[str, Any]:
    """Each gateway process's collector pauses inside the window (/debug/gc): the
    full collections and every pause of 5 ms or more, as
    {generation: [count, longest ms]}."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(20 * procs):
        try:
            body = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{port}/debug/gc", timeout=60).read())
        except OSError:
            break
        seen.setdefault(body["instance"], body)
        if len(seen) == procs:
            break
    # "window": in the measured window; "run": full collections over the process's
    # whole life (startup and connection bursts included) as [count, longest ms].
    return {inst: {"window": _gc_pauses([r for r in b["recent"] if t0 <= r[0] <= t1]),
                   "run_gen2": [b["summary"]["gen2"]["n"], b["summary"]["gen2"]["max_ms"]],
                   "freezes": b["summary"].get("freezes", 0)}
            for inst, b in sorted(seen.items())}


def _gc_pauses(rows: list[list[float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for _, gen, ms in rows:
        n, longest = out.get(f"gen{int(gen)}", [0, 0.0])
        out[f"gen{int(gen)}"] = [n + 1, max(longest, ms)]
    return out


def _send_age(m: dict[str, float],
              name: str = "gateway_event_age_ms") -> dict[str, dict[str, str]]:
    """p50/p99 of the gateway's own event age when a frame is handed to the server
    (publish -> send, first event of each frame), as histogram bucket bounds: it splits
    the clients' latency into gateway time and socket/client time."""
    out: dict[str, dict[str, str]] = {}
    for prio in (*PRIOS, "all"):
        rows = sorted(((float("inf") if le == "+Inf" else float(le)), n)
                      for k, n in m.items()
                      if k.startswith(f'{name}_bucket{{priority="{prio}"')
                      for le in [k.rsplit('le="', 1)[1].rstrip('"}')])
        if not rows or not rows[-1][1]:
            continue
        total = rows[-1][1]
        q: dict[str, str] = {}
        for qname, frac in (("p50", 0.5), ("p99", 0.99)):
            le = next(b for b, n in rows if n >= frac * total)
            q[qname] = f"<={le:g}"
        out[prio] = q
    return out


async def _readline(proc: asyncio.subprocess.Process, timeout: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError("a bench process ended early")
    return line.decode().strip()


def _spawn_gateway(nats_url: str, cfg: Path, port: int, server: str = "uvicorn",
                   instance: str = "gw0", reuse_port: bool = False) -> subprocess.Popen[str]:
    """The gateway process, returned once it listens. GATEWAY_PROFILE=<file> runs it
    under cProfile (the profile is written when it drains on SIGTERM)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    prof = os.environ.get("GATEWAY_PROFILE")
    prof_args = ["-m", "cProfile", "-o", f"{prof}.{instance}"] if prof else []
    gw = subprocess.Popen(
        [sys.executable, *prof_args, "-m", "node.cli", "--url", nats_url, "gateway",
         "--gateway-config", str(cfg), "--port", str(port), "--server", server,
         "--instance", instance, *(["--reuse-port"] if reuse_port else [])],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert gw.stdout is not None
    for line in gw.stdout:
        if "listening" in line:
            return gw
    raise RuntimeError("the gateway did not start")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    if not args.rate:
        # The same delivery load (~55,000 events/s) whatever the number of clients.
        args.rate = max(1, round(60 * 1000 / args.clients))
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    client_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if args.client == "go":
        try:
            binary = await asyncio.to_thread(build_go_client, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        client_cmd = [str(binary)]
        if args.client_gomaxprocs:
            client_env["GOMAXPROCS"] = str(args.client_gomaxprocs)
    else:
        client_cmd = [sys.executable, "-m", "gateway.bench_client"]
    nats = NatsServer(tmp / "nats")
    await nats.start_ready()
    await provision.apply_to(nats.url)
    port = free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""
[gateway]
heartbeat_s = 10
# The load generator answers every heartbeat, but with 10,000 connections opening it
# may be busy for many seconds: a dead peer is still dropped, just later.
idle_timeout_s = 120
flush_ms = {args.flush_ms}
[gateway.auth]
hs256_secret = "{SECRET}"
[gateway.limits]
connects_per_s_per_ip = 1000000.0
connect_burst_per_ip = 1000000
max_connections_per_user = 10
""")
    n_gw = args.gateway_procs
    gws = [await asyncio.to_thread(_spawn_gateway, nats.url, cfg, port, args.server,
                                   f"gw{i}", n_gw > 1) for i in range(n_gw)]
    clients: list[asyncio.subprocess.Process] = []
    try:
        procs = args.procs or client_procs(args.clients, args.client)
        per = [args.clients // procs + (1 if i < args.clients % procs else 0)
               for i in range(procs)]
        first = 0
        t_setup = time.monotonic()
        for n in per:
            clients.append(await asyncio.create_subprocess_exec(
                *client_cmd, "--url",
                f"ws://127.0.0.1:{port}/ws", "--secret", SECRET, "--first", str(first),
                "--count", str(n), "--inflight", str(args.inflight),
                "--sched", args.client_sched, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env=client_env,
                limit=16 * 1024 * 1024))
            first += n
        for c in clients:
            assert await _readline(c, 300) == "ready"
        setup_s = time.monotonic() - t_setup
        idle_rss = sum(_rss_mb(g.pid) for g in gws)
        async with Mesh.connect(nats.url, service="bench") as mesh:
            warm = 2.0
            t0 = time.time() + warm
            t1 = t0 + args.seconds
            for c in clients:
                assert c.stdin is not None
                c.stdin.write(f"go {t0} {t1}\n".encode())
                await c.stdin.drain()
            pids = {"gateway": [g.pid for g in gws], "clients": [c.pid for c in clients],
                    "nats": [nats.proc.pid] if nats.proc is not None else [],
                    "publisher": [os.getpid()]}
            cpu0 = _totals(host.cpu_s, pids)
            ctx0 = _totals(_ctx_switches, pids)

            def at_t0() -> None:
                cpu0.update(_totals(host.cpu_s, pids))
                ctx0.update(_totals(_ctx_switches, pids))

            critical_ids = await _publish(mesh, args, t0, t1, at_t0)
            # CPU used in the measured window, in cores: what the gateway and the load
            # generator cost, independent of what else runs on the machine.
            cpu1, ctx1 = _totals(host.cpu_s, pids), _totals(_ctx_switches, pids)
            cpu = {k: round((cpu1[k] - cpu0[k]) / args.seconds, 2) for k in pids}
            ctx = {k: round((ctx1[k] - ctx0[k]) / args.seconds) for k in ("gateway", "clients")}
            peak_rss = [_rss_mb(g.pid) for g in gws]
            await mesh.publish(Event(event_type="MARGIN_CALL", symbol="ENDMARK",
                                     account="ACC0"))
            results = [json.loads(await _readline(c, 120)) for c in clients]
        m = await asyncio.to_thread(_metrics, port, n_gw)
        gc_gw = await asyncio.to_thread(_gc_in_window, port, n_gw, t0, t1)
    finally:
        for c in clients:
            with contextlib.suppress(ProcessLookupError):
                c.kill()
        for g in gws:
            g.terminate()
        for g in gws:
            with contextlib.suppress(subprocess.TimeoutExpired):
                g.wait(30)
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the store and config of this run
    hist: dict[str, HdrHistogram] = {}
    delivered = conflated = dropped = 0
    closed: dict[str, int] = {}
    unfinished = connected = 0
    gc_clients: list[list[float]] = []
    for r in results:
        gc_clients += r.get("gc", [])
        connected += r["connected_at_end"]
        unfinished += r["unfinished"]
        delivered += r["delivered"]
        conflated += r["conflated"]
        for k, v in r["closed"].items():
            closed[k] = closed.get(k, 0) + v
        for k, rows in r["lat_us"].items():
            if k not in hist:
                hist[k] = HdrHistogram(1, 600_000_000, 2)  # microseconds
            h = hist[k]
            for us, count in rows:
                h.record_value(us, count)
        # Every client that got the end marker must hold every critical event before it.
        for got in r["critical_counts"]:
            dropped += max(0, critical_ids - got)
    latency = {
        k: {q: round(h.get_value_at_percentile(p) / 1000, 2)
            for q, p in (("p50", 50), ("p99", 99), ("p999", 99.9))}
        for k, h in hist.items() if h.get_total_count()
    }
    return {
        "clients": args.clients,
        "connected_at_end": connected,
        "server": args.server,
        "gateway_procs": n_gw,
        "flush_ms": args.flush_ms,
        "client": args.client,
        "client_procs": len(per),
        "client_sched": args.client_sched,
        # The Go client runs with GOMAXPROCS 1 unless the environment says otherwise.
        **({"client_gomaxprocs": int(client_env.get("GOMAXPROCS") or 1)}
           if args.client == "go" else {}),
        "rate": args.rate,
        "seconds": args.seconds,
        "delivered_per_s": round(delivered / args.seconds),
        "latency_ms": latency,
        "gateway_rss_mb": round(sum(peak_rss), 1),
        "gateway_rss_mb_per_proc": peak_rss,
        "gateway_idle_rss_mb": idle_rss,
        "connect_s": round(setup_s, 1),
        "dropped_critical": dropped + int(m.get('gateway_dropped_total{kind="critical"}', 0)),
        "conflated": int(m.get("gateway_conflated_total", 0)),
        "conflated_seen_by_clients": conflated,
        "critical_published": critical_ids,
        "clients_behind_at_end": unfinished,
        "frames_out": int(m.get("gateway_frames_out_total", 0)),
        "gateway_send_age_ms": _send_age(m),
        # The same at arrival from NATS (publish -> the gateway starts its fan-out).
        "gateway_arrival_age_ms": _send_age(m, "gateway_event_arrival_age_ms"),
        # Wall time of the gateway's flush passes (one per flush_ms tick with work).
        "gateway_flush_pass_ms": _send_age(m, "gateway_flush_pass_ms").get("all", {}),
        "gateway_flush_pass_cpu_ms": _send_age(m, "gateway_flush_pass_cpu_ms").get("all", {}),
        "cpu_cores": cpu,
        # Context switches per second in the window (all gateway / all client processes).
        "ctx_switches_per_s": ctx,
        # Collector pauses in the window: {generation: [collections, longest ms]}, per
        # gateway process and over all client processes (gen0 only when >= 5 ms).
        "gc_pauses": {"gateway": gc_gw, "clients": _gc_pauses(gc_clients)},
        # 1/5/15-minute load averages when the bench started (others' work on the machine)
        "loadavg_before": load_before,
        "closed": closed,
        "metrics_from": int(m.get("instances_answered", 0)),
    }


async def _publish(mesh: Mesh, args: argparse.Namespace, t0: float, t1: float,
                   at_t0: Callable[[], None]) -> int:
    """The mixed load at args.rate events/s in 10 ms ticks; returns how many critical
    events went out inside the window."""
    rnd = random.Random(7)
    symbols = [f"SYM{i}" for i in range(args.symbols)]
    tick = 0.01
    per_tick = args.rate * tick
    owed = 0.0
    criticals = 0
    n = 0
    next_t = time.time()
    started = False
    while (now := time.time()) < t1:
        if not started and now >= t0:
            started = True
            at_t0()
        owed += per_tick
        batch: list[Event] = []
        while owed >= 1:
            owed -= 1
            n += 1
            r = rnd.random()
            if r < 0.02 and t0 <= now:
                criticals += 1
                batch.append(Event(event_type="MARGIN_CALL", account=f"ACC{n % 50}",
                                   symbol=rnd.choice(symbols), payload={"n": n}))
            elif r < 0.10:
                batch.append(Event(event_type="ORDER_FILLED", account=f"ACC{n % 50}",
                                   symbol=rnd.choice(symbols), payload={"qty": 100, "n": n}))
            else:
                batch.append(Event(event_type="PRICE_UPDATE", symbol=rnd.choice(symbols),
                                   payload={"price": round(100 + rnd.random(), 4), "n": n}))
        if batch:
            await mesh.publish_many(batch)
        next_t += tick
        await asyncio.sleep(max(0.0, next_t - time.time()))
    return criticals

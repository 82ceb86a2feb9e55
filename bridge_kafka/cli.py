"""This part's `mesh` sub-commands (wired in by node/cli.py):

mesh bridge run -f bridge.toml [--direction D] [--metrics-file m.prom]
                                                         the bridge, until Ctrl-C
mesh bridge status [--name bridge-1]                     health, lag, counts (JSON)
mesh bridge kafka [--dir DIR]                            a loopback Kafka 4 broker
mesh bench bridge                                        throughput and added latency
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile

from bridge_kafka import config as bcfg
from bridge_kafka import status as bstatus
from mesh import config, gcpolicy
from mesh.cli import SubParsers
from mesh.client import Mesh, connect_nats


def _url(args: argparse.Namespace, cfg: config.MeshConfig) -> str:
    return str(args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}")


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def cmd_run(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from bridge_kafka.bridge import Bridge

    bc = bcfg.load(args.file)
    if args.bootstrap:
        bc.bootstrap = args.bootstrap
    if not bc.bootstrap:
        print("bridge: off (no `bootstrap` configured)")
        return 0
    part = args.direction
    mesh = Mesh.from_config(cfg, _url(args, cfg), args.user, args.password)
    mesh.service = f"bridge-{bc.name}" + (f"-{part}" if part else "")
    bridge = Bridge(
        bc, mesh, catalog=cfg.build_catalog(), metrics_file=args.metrics_file, part=part
    )
    serves = ", ".join(bridge.cfg.directions)
    async with mesh, bridge:
        # What lives as long as the process, out of the full collections' walk: they
        # ran ~30 ms each in the NATS -> Kafka drain (docs/bridge.md, "The collector").
        gcpolicy.settle()
        print(
            f"bridge {bc.name}: running {serves} (Kafka {bc.bootstrap}, NATS {_url(args, cfg)})",
            flush=True,
        )
        signalled = asyncio.ensure_future(_until_signal())
        failed = asyncio.ensure_future(bridge.wait_failed())
        await asyncio.wait([signalled, failed], return_when=asyncio.FIRST_COMPLETED)
        for t in (signalled, failed):
            t.cancel()
        if failed.done() and not failed.cancelled():
            print(f"bridge {bc.name}: {failed.result()}; exiting", flush=True)
            return 1
    return 0


async def cmd_status(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    user = args.user or cfg.nats.user
    password = args.password if args.user else cfg.nats.password
    nc = await connect_nats(_url(args, cfg), user, password)
    try:
        replies = await bstatus.gather(nc, args.name, args.timeout)
    finally:
        await nc.close()
    if not replies:
        error = f"no process of bridge {args.name!r} answered in {args.timeout}s"
        print(json.dumps({"name": args.name, "health": {"status": "unreachable", "error": error}}))
        return 1
    status = bstatus.merge(replies)
    print(json.dumps(status, indent=2))
    return 0 if status["health"]["status"] == "ok" else 1


async def cmd_kafka(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from bridge_kafka.broker import KafkaBroker

    with contextlib.ExitStack() as stack:
        data = args.dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tm-kafka-"))
        broker = KafkaBroker(data, port=args.port)
        await broker.start_ready(timeout=180)
        print(f"kafka: ready at {broker.bootstrap} (data {broker.data_dir})", flush=True)
        try:
            await _until_signal()
        finally:
            broker.stop()
    return 0


async def cmd_bench(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from bridge_kafka import bench

    return await bench.main(args)


def register(commands: SubParsers, benches: SubParsers) -> None:
    """Add this part's commands to `commands` and its benchmark to `benches`
    (`mesh bench <name>`); each parser sets `fn=async (args, cfg) -> int`."""
    b = commands.add_parser("bridge", help="two-way Kafka bridge: run, status, a test broker")
    sub = b.add_subparsers(dest="bridge_cmd", required=True)
    r = sub.add_parser("run", help="run the bridge from a bridge config file")
    r.add_argument("-f", "--file", required=True, help="bridge config (TOML)")
    r.add_argument("--bootstrap", help="Kafka bootstrap address (overrides the file)")
    r.add_argument(
        "--direction",
        choices=bcfg.DIRECTIONS,
        help="run only this direction's rules (one process per direction, same name and"
        " positions; `bridge status` merges them). Default: every direction the file has",
    )
    r.add_argument("--metrics-file", help="write Prometheus text here every second")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser(
        "status", help="health, lag, throughput, errors, DLQ counts (all its processes)"
    )
    s.add_argument("--name", default="bridge", help="the bridge's `name`")
    s.add_argument("--timeout", type=float, default=2.0)
    s.set_defaults(fn=cmd_status)
    k = sub.add_parser("kafka", help="a single-node Kafka 4 broker on loopback (foreground)")
    k.add_argument("--dir", help="data directory (kept; default: a temporary one)")
    k.add_argument("--port", type=int, default=0, help="listener port (default: a free one)")
    k.set_defaults(fn=cmd_kafka)
    bb = benches.add_parser("bridge", help="bridge throughput each way and added latency")
    bb.add_argument("--events", type=int, default=200_000, help="events per direction")
    bb.add_argument("--rate", type=int, default=2000, help="events/s each way in the latency phase")
    bb.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    bb.add_argument(
        "--tick-ms",
        type=float,
        default=10.0,
        help="latency phase: the load is sent every tick, rate x tick events at once",
    )
    bb.add_argument(
        "--end-to-end",
        action="store_true",
        help="latency phase: also time creation -> receipt with live readers on both sides",
    )
    bb.add_argument("--kafka", help="use this Kafka instead of starting one")
    bb.add_argument("--nats", help="use this NATS instead of starting one")
    bb.set_defaults(fn=cmd_bench)

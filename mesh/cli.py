"""The `mesh` command: run a node, publish, tail, inspect, benchmark.

Each sub-command is one async function; argparse wiring is at the bottom.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeAlias

import msgspec
from nats.aio.client import Client

from mesh import chain, config, jsapi, lag, provision, server, tracing
from mesh.catalog import Priority
from mesh.client import Mesh, connect_nats
from mesh.errors import MeshError
from mesh.events import Event
from mesh.loop import run as run_loop
from mesh.subscriber import Interest, Start

Handler = Callable[[argparse.Namespace, config.MeshConfig], Awaitable[int]]


def _url(args: argparse.Namespace, cfg: config.MeshConfig) -> str:
    return str(args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}")


def _mesh(args: argparse.Namespace, cfg: config.MeshConfig) -> Mesh:
    return Mesh.from_config(cfg, _url(args, cfg), args.user, args.password)


async def _connect(args: argparse.Namespace, cfg: config.MeshConfig) -> Client:
    """A plain connection for commands that only read or manage streams."""
    user = args.user or cfg.nats.user
    password = args.password if args.user else cfg.nats.password
    return await connect_nats(_url(args, cfg), user, password)


def _ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]


def _when(ns_iso: str | None) -> str:
    if not ns_iso or ns_iso.startswith("0001-"):
        return "-"
    return ns_iso[:23].replace("T", " ")


# -- up ------------------------------------------------------------------------------------


async def cmd_up(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from mesh.demo import Demo

    embedded: server.NatsServer | None = None
    url = _url(args, cfg)
    if not (args.url or cfg.nats.url):
        embedded = server.NatsServer(
            cfg.nats.data_dir,
            port=cfg.nats.port,
            monitor_port=cfg.nats.monitor_port,
            config_dir=cfg.nats.config_dir,
        )
        embedded.start()
        await embedded.wait_ready()
        print(
            f"nats-server {server.server_version()} on {embedded.url} "
            f"(monitoring http://127.0.0.1:{embedded.monitor_port}, data {embedded.store_dir})"
        )
    try:
        nc = await connect_nats(url, cfg.nats.user, cfg.nats.password)
        defs = provision.load_streams(cfg.nats.config_dir)
        for change in await provision.apply(nc, defs, args.replicas or cfg.nats.replicas):
            extra = f" ({', '.join(change.fields)})" if change.fields else ""
            print(f"stream {change.stream}: {change.action}{extra}")
        await nc.close()
        if not args.demo:
            print("mesh is up; Ctrl-C stops it")
            await _wait_for_signal()
            return 0
        return await _run_demo(url, args, Demo)
    finally:
        if embedded is not None:
            embedded.stop()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _run_demo(url: str, args: argparse.Namespace, demo_cls: Any) -> int:
    shown = {Priority.CRITICAL, Priority.HIGH}

    def show(service: str, e: Event) -> None:
        if e.priority is Priority.CRITICAL or (e.priority in shown and e.account and args.verbose):
            print(
                f"{_ts(e.timestamp)} {str(e.priority).upper():<10} {e.event_type:<24} "
                f"{e.symbol or '':<8} {e.account or '':<7} {service:<12} "
                f"corr={e.correlation_id[:13]}…",
                flush=True,
            )

    demo = demo_cls(url, rate=args.rate, on_event=show)
    print(
        f"demo traffic at ~{args.rate:g} market events/s; critical events are shown as they "
        "happen, a summary every 5 s. Try in another shell: .venv/bin/mesh sub 'tm.high.>' ; "
        ".venv/bin/mesh streams ; Ctrl-C stops.",
        flush=True,
    )
    task = asyncio.create_task(demo.run())
    stopper = asyncio.create_task(_wait_for_signal())
    last: dict[str, int] = {}
    try:
        while not task.done() and not stopper.done():
            await asyncio.wait({task, stopper}, timeout=5)
            now = dict(demo.stats.published)
            rates = " ".join(
                f"{k}={(v - last.get(k, 0)) / 5:.0f}/s" for k, v in sorted(now.items())
            )
            prices = " ".join(f"{s}={p:.2f}" for s, p in list(demo.prices.items())[:5])
            print(f"-- published {sum(now.values())} events  {rates}  |  {prices}", flush=True)
            last = now
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if task.done() and not task.cancelled() and task.exception():
        raise task.exception()  # type: ignore[misc]
    return 0


# -- provision / pub / sub -----------------------------------------------------------------


async def cmd_provision(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    nc = await _connect(args, cfg)
    try:
        defs = provision.load_streams(args.config_dir or cfg.nats.config_dir)
        for c in await provision.apply(nc, defs, args.replicas or cfg.nats.replicas):
            print(
                f"stream {c.stream}: {c.action}" + (f" ({', '.join(c.fields)})" if c.fields else "")
            )
    finally:
        await nc.close()
    return 0


async def cmd_pub(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise MeshError(f"--payload is not JSON: {e}") from e
    if not isinstance(payload, dict):
        raise MeshError("--payload must be a JSON object, e.g. '{\"price\": 101.5}'")
    event = Event(
        event_type=args.event_type,
        symbol=args.symbol,
        account=args.account,
        payload=payload,
        correlation_id=args.correlation_id or "",
        causation_id=args.causation_id,
    )
    async with _mesh(args, cfg) as mesh:
        for _ in range(args.count):
            seq = await mesh.publish(event)
            print(f"published {event.event_type} {event.event_id} -> {event.priority} seq {seq}")
            event = Event(
                event_type=event.event_type,
                symbol=event.symbol,
                account=event.account,
                payload=payload,
            )
    return 0


def _start(spec: str) -> Start:
    if spec == "new":
        return Start.new()
    if spec == "all":
        return Start.all()
    kind, _, value = spec.partition(":")
    if kind == "seq" and value.isdigit():
        return Start.at_seq(int(value))
    if kind == "time":
        return Start.at_time(datetime.fromisoformat(value))
    if kind == "ago":
        from mesh import units

        return Start.at_time(datetime.fromtimestamp(time.time() - units.seconds(value), UTC))
    raise MeshError(f"--from {spec!r}: use new, all, seq:N, time:2026-11-27T10:00:00, ago:5m")


async def cmd_sub(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    filters: list[str | Interest] = list(args.filters)
    if args.type or args.symbol or args.account or args.priority:
        filters.append(
            Interest(
                event_type=args.type,
                symbol=args.symbol,
                account=args.account,
                priority=Priority(args.priority) if args.priority else None,
            )
        )
    seen = 0
    async with (
        _mesh(args, cfg) as mesh,
        mesh.subscribe(
            *(filters or ["tm.>"]),
            where=args.where,
            start=_start(args.start),
            durable=args.durable,
            ack="explicit" if args.durable else "none",
        ) as sub,
    ):
        stop = asyncio.create_task(_wait_for_signal())
        while not stop.done():
            nxt = asyncio.create_task(sub.next())
            await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                break
            d = nxt.result()
            e = d.event
            if args.json:
                print(msgspec.json.encode(e).decode(), flush=True)
            else:
                age = (time.time_ns() - e.timestamp) / 1e6
                print(
                    f"{_ts(e.timestamp)} {str(e.priority).upper():<10} {e.event_type:<24} "
                    f"{e.symbol or '-':<8} {e.account or '-':<7} {d.stream}#{d.seq:<8} "
                    f"age={age:7.1f}ms {msgspec.json.encode(e.payload).decode()}",
                    flush=True,
                )
            if args.durable:
                await d.ack()
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


# -- streams / chain / types ---------------------------------------------------------------


async def cmd_streams(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    nc = await _connect(args, cfg)
    rows = []
    try:
        for name in sorted(await jsapi.stream_names(nc)):
            info = await jsapi.call(nc, f"$JS.API.STREAM.INFO.{name}")
            st = info["state"]
            cons = await jsapi.consumers(nc, name)
            backlog = sum(
                int(c.get("num_pending", 0)) + int(c.get("num_ack_pending", 0)) for c in cons
            )
            rows.append(
                {
                    "stream": name,
                    "messages": st["messages"],
                    "bytes": st["bytes"],
                    "first": _when(st.get("first_ts")),
                    "last": _when(st.get("last_ts")),
                    "consumers": st.get("consumer_count", len(cons)),
                    "lag": backlog,
                    "replicas": info["config"].get("num_replicas", 1),
                    "consumer_lag": {c["name"]: int(c.get("num_pending", 0)) for c in cons},
                }
            )
        reported = await lag.gather(nc)
    finally:
        await nc.close()
    if args.json:
        rows += [{"reported_by": r.source, "lag": r.lag, "figures": r.figures} for r in reported]
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'STREAM':<15}{'MESSAGES':>10}{'BYTES':>12}  {'FIRST':<23}  {'LAST':<23}"
        f"{'CONSUMERS':>10}{'LAG':>9}"
    )
    for r in rows:
        print(
            f"{r['stream']:<15}{r['messages']:>10}{r['bytes']:>12}  {r['first']:<23}  "
            f"{r['last']:<23}{r['consumers']:>10}{r['lag']:>9}"
        )
        if args.verbose:
            for name, pending in sorted(r["consumer_lag"].items()):
                print(f"    consumer {name:<40} pending {pending}")
    for report in reported:  # backlogs outside JetStream (mesh/lag.py)
        figures = "".join(f", {name} {value:g}" for name, value in report.figures.items())
        print(f"{report.source}: lag {sum(report.lag.values())}{figures}")
        for where, behind in sorted(report.lag.items()):
            print(f"    {where:<48} {behind}")
    return 0


async def cmd_chain(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    nc = await _connect(args, cfg)
    try:
        found = await chain.collect(nc, args.correlation_id)
    finally:
        await nc.close()
    if not found:
        print(
            f"no events with correlation id {args.correlation_id} in the streams", file=sys.stderr
        )
        return 1
    print(chain.render(chain.build(found)))
    return 0


async def cmd_types(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    cat = cfg.build_catalog()
    for spec in sorted(cat.types.values(), key=lambda s: (s.priority.rank, s.domain, s.name)):
        key = cat.domains[spec.domain].partition_by
        print(f"{spec.priority.value:<11}{spec.domain:<14}{spec.name:<26}ordered by {key}")
    return 0


async def cmd_bench_publish(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    from mesh.bench import publish as bench_publish

    return await bench_publish.main(args)


# -- wiring ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh", description="TradeMaster Mesh")
    p.add_argument("--config", help="mesh.toml (default: $MESH_CONFIG or ./mesh.toml)")
    p.add_argument("--url", help="NATS URL(s), comma-separated (default: the embedded node)")
    p.add_argument("--user", help="NATS user (default from config: mesh)")
    p.add_argument("--password", help="NATS password")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a node: embedded nats-server, streams, demo traffic")
    up.add_argument("--demo", action="store_true", help="run the demo traffic generator")
    up.add_argument("--rate", type=float, default=200.0, help="demo market events per second")
    up.add_argument("--replicas", type=int, default=0)
    up.set_defaults(fn=cmd_up)

    pr = sub.add_parser("provision", help="apply nats-config/streams.toml (idempotent)")
    pr.add_argument("--config-dir")
    pr.add_argument("--replicas", type=int, default=0)
    pr.set_defaults(fn=cmd_provision)

    pub = sub.add_parser("pub", help="publish one event")
    pub.add_argument("event_type")
    pub.add_argument("--symbol")
    pub.add_argument("--account")
    pub.add_argument("--payload", default="{}", help="JSON object")
    pub.add_argument("--correlation-id")
    pub.add_argument("--causation-id")
    pub.add_argument("--count", type=int, default=1)
    pub.set_defaults(fn=cmd_pub)

    s = sub.add_parser("sub", help="live tail with subject and content filters")
    s.add_argument("filters", nargs="*", help="subject filters, e.g. 'tm.critical.>'")
    s.add_argument("--type")
    s.add_argument("--symbol")
    s.add_argument("--account")
    s.add_argument("--priority", choices=[p.value for p in Priority])
    s.add_argument(
        "--where", help="content filter, e.g. 'payload.price > 100 and symbol in [AAPL]'"
    )
    s.add_argument(
        "--from", dest="start", default="new", help="new | all | seq:N | time:ISO | ago:5m"
    )
    s.add_argument("--durable", help="durable consumer name (resume where it stopped)")
    s.add_argument("--count", type=int, default=0, help="stop after N events")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_sub)

    st = sub.add_parser("streams", help="per stream: messages, bytes, first/last, consumers, lag")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_streams)

    ch = sub.add_parser("chain", help="causation tree of a correlation id")
    ch.add_argument("correlation_id")
    ch.set_defaults(fn=cmd_chain)

    ty = sub.add_parser("types", help="the event catalog")
    ty.set_defaults(fn=cmd_types)

    b = sub.add_parser("bench", help="benchmarks (each prints a final JSON line)")
    benches = b.add_subparsers(dest="bench", required=True)
    bp = benches.add_parser("publish", help="acked publish throughput, then latency under load")
    bp.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    bp.add_argument("--rate", type=int, default=20_000, help="latency phase events/s")
    bp.add_argument("--runs", type=int, default=3, help="throughput runs (the median is reported)")
    bp.set_defaults(fn=cmd_bench_publish)
    return p


async def _call(fn: Handler, args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    return await fn(args, cfg)


SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _subparsers(p: argparse.ArgumentParser) -> SubParsers:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"{p.prog} has no sub-commands")


def subcommands(p: argparse.ArgumentParser) -> tuple[SubParsers, SubParsers]:
    """The command table of `parser()` and its `bench` table, for parts to add to."""
    top = _subparsers(p)
    return top, _subparsers(top.choices["bench"])


def run(p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config.load(args.config)
        tracing.configure(cfg.tracing, cfg.service)
        fn: Handler = args.fn
        sys.exit(run_loop(_call(fn, args, cfg)))
    except MeshError as e:
        print(f"mesh: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """The core commands only (the full `mesh` command is node.cli)."""
    run(parser(), argv)


if __name__ == "__main__":
    main()

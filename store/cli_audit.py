"""`mesh audit` and `mesh replay`: what auditors and operators type."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from mesh import chain, config, history
from mesh.catalog import Priority
from mesh.client import Mesh
from mesh.events import Event, decode
from store import db, queries, replay
from store.errors import BadQuery, QueryFailed

DEFAULT_ENDPOINT = "http://auditor:audit-dev@127.0.0.1:8124"


def when(text: str | None, default: datetime) -> datetime:
    """ISO time, or a relative one like `2h` / `3d` / `15m` ago."""
    if not text:
        return default
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1] in units and text[:-1].replace(".", "").isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def client_of(args: argparse.Namespace) -> Client:
    return db.connect(args.store or args.endpoint)


def _print_rows(names: Sequence[str], rows: Sequence[Sequence[Any]], as_json: bool) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(dict(zip(names, r, strict=False)), default=str))
        return
    print("\t".join(names))
    for r in rows:
        print("\t".join("" if v is None else str(v) for v in r))


async def cmd_audit(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    try:
        return _audit(args)
    except ClickHouseError as e:
        raise QueryFailed(_first_line(str(e))) from e


def _first_line(text: str) -> str:
    i = text.find("Code: ")
    return (text[i:] if i >= 0 else text).split(" (for url")[0].strip()


def _audit(args: argparse.Namespace) -> int:
    client = client_of(args)
    d = args.database
    since = when(args.since, datetime.now(UTC) - timedelta(days=1))
    until = when(args.until, datetime.now(UTC) + timedelta(seconds=1))
    try:
        if args.what == "chain":
            found = replay.chain_rows(client, d, args.key)
            if not found:
                print(f"no events with correlation id {args.key} in the store", file=sys.stderr)
                return 1
            print(chain.render(chain.build(found)))
            return 0
        if args.what == "sql":
            r = client.query(args.key)
            _print_rows(r.column_names, r.result_rows, args.json)
            return 0
        named = {
            "correlation": lambda: queries.by_correlation(d, args.key, args.limit),
            "account": lambda: queries.by_account(d, args.key, since, until, args.limit),
            "symbol": lambda: queries.by_symbol(d, args.key, since, until, args.limit),
            "type": lambda: queries.by_type(d, args.key, since, until, args.limit),
            "range": lambda: queries.time_range(d, since, until, args.limit),
        }
        if args.what != "range" and not args.key:
            raise BadQuery(
                f"`mesh audit {args.what}` needs a value, e.g. `mesh audit {args.what} X`"
            )
        sql, params = named[args.what]()
        r = client.query(sql, parameters=params)
        _print_rows(r.column_names, r.result_rows, args.json)
        print(f"({len(r.result_rows)} rows)", file=sys.stderr)
        return 0
    finally:
        client.close()


def _from_jetstream(
    args: argparse.Namespace, nc: Any, since: datetime | None, until: datetime
) -> Any:
    streams = [args.stream] if args.stream else [p.stream for p in Priority]

    async def gen() -> Any:
        # stream by stream: each stream's order is its stored order, so per-symbol order holds
        for s in streams:
            async for m in history.scan(
                nc, s, start_seq=args.start_seq, start_time=None if args.start_seq else since
            ):
                e = decode(m.data)
                if e.timestamp >= until.timestamp() * 1e9:
                    break
                if _match(args, e):
                    yield e

    return gen()


def _match(args: argparse.Namespace, e: Event) -> bool:
    return (
        (not args.symbol or e.symbol == args.symbol)
        and (not args.account or e.account == args.account)
        and (not args.type or e.event_type == args.type)
    )


def _store_where(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    conds, params = [], {}
    for col, val in (
        ("symbol", args.symbol),
        ("account", args.account),
        ("event_type", args.type),
        ("stream", args.stream),
    ):
        if val:
            conds.append(f"{col} = {{{col}:String}}")
            params[col] = val
    return " AND ".join(conds), params


async def cmd_replay(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    try:
        return await _replay(args, cfg)
    except ClickHouseError as e:
        raise QueryFailed(_first_line(str(e))) from e


async def _replay(args: argparse.Namespace, cfg: config.MeshConfig) -> int:
    since = (
        when(args.since, datetime.now(UTC) - timedelta(hours=1))
        if (args.since or not args.start_seq)
        else None
    )
    until = when(args.until, datetime.now(UTC) + timedelta(seconds=1))
    url = str(args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}")
    user = args.user or cfg.nats.user
    password = args.password if args.user else cfg.nats.password
    started = time.monotonic()

    def progress(n: int) -> None:
        rate = n / max(1e-6, time.monotonic() - started)
        print(f"\rreplayed {n} events ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)

    async with Mesh.connect(url, service="replay", user=user, password=password) as mesh:
        source = args.source
        if source == "auto":
            source = (
                "store"
                if since is not None and await _older_than_streams(mesh, since)
                else "jetstream"
            )
        if source == "store":
            assert since is not None
            client = client_of(args)
            where, params = _store_where(args)
            found: Iterator[Event] = replay.events(
                client, args.database, since, until, where, params
            )
        else:
            agen = _from_jetstream(args, mesh.nc, since, until)
            found = [e async for e in agen].__iter__()
        n = await replay.replay(
            mesh,
            found,
            prefix=args.prefix,
            live=args.live,
            rate=args.rate,
            dry_run=args.dry_run,
            progress=None if args.quiet else progress,
        )
    verb = "would replay" if args.dry_run else "replayed"
    target = "live subjects" if args.live else f"{args.prefix}.tm.>"
    print(f"\n{verb} {n} events from {source} to {target}", file=sys.stderr)
    return 0


async def _older_than_streams(mesh: Mesh, since: datetime) -> bool:
    """True when some stream no longer holds events from `since` (its first is newer)."""
    for p in Priority:
        info = await mesh.stream_info(p.stream)
        if info is None or not info["state"]["messages"]:
            continue
        first = _iso(info["state"]["first_ts"])
        if first > since:
            return True
    return False


def _iso(ts: str) -> datetime:
    """JetStream's RFC 3339 time with nanoseconds, to a datetime (microseconds)."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})?", ts)
    if m is None:
        raise BadQuery(f"unexpected stream time {ts!r}")
    return datetime.fromisoformat(m.group(1) + (m.group(2) or "")).replace(tzinfo=UTC)


def register(commands: Any) -> None:
    a = commands.add_parser("audit", help="query the audit store (named queries, SQL, chains)")
    a.add_argument(
        "what", choices=["correlation", "account", "symbol", "type", "range", "sql", "chain"]
    )
    a.add_argument("key", nargs="?", default="", help="the id / account / symbol / type / SQL")
    a.add_argument("--since", help="ISO time or 15m/2h/3d ago (default 1d)")
    a.add_argument("--until", help="ISO time or relative (default now)")
    a.add_argument("--limit", type=int, default=1000)
    a.add_argument("--json", action="store_true", help="one JSON object per row")
    _source_args(a)
    a.set_defaults(fn=cmd_audit)

    r = commands.add_parser("replay", help="re-publish history from JetStream or the store")
    r.add_argument(
        "--source",
        choices=["auto", "jetstream", "store"],
        default="auto",
        help="auto: JetStream if the streams still hold --since, else the store",
    )
    r.add_argument("--since", help="ISO time or 15m/2h/3d ago (default 1h)")
    r.add_argument("--until", help="ISO time or relative (default now)")
    r.add_argument("--start-seq", type=int, help="JetStream: from this stream sequence")
    r.add_argument("--stream", help="one stream only, e.g. TM_HIGH")
    r.add_argument("--symbol")
    r.add_argument("--account")
    r.add_argument("--type", help="event type")
    r.add_argument("--prefix", default="replay", help="subject prefix (default replay)")
    r.add_argument(
        "--live",
        action="store_true",
        help="publish into the live subjects (JetStream drops known event ids)",
    )
    r.add_argument("--rate", type=float, default=0.0, help="events/s (default: unlimited)")
    r.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    _source_args(r)
    r.set_defaults(fn=cmd_replay)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"the store's auditor endpoint (default {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--store", help="a chDB path or ClickHouse URL to read directly instead")
    p.add_argument("--database", default="audit")

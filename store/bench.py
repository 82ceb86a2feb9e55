"""`mesh bench store`: ingest rate JetStream -> table, publish -> row lag, audit query
latency. Starts its own nats-server and chDB path on loopback.

* ingest: `--events` events are published first (a backlog), then the sink drains it;
  rows/s = rows / drain time.
* lag: `--lag-events` are then published at `--lag-rate`/s while the sink runs; lag of a
  row = ingested_at (set by ClickHouse at insert) - event timestamp (set at publish).
* queries: `--rows` rows are bulk-generated straight into the table with INSERT ... SELECT
  (not through JetStream), then each named query runs `--repeat` times on random keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mesh import provision
from mesh.bench import host
from mesh.client import Mesh
from mesh.events import Event
from mesh.server import NatsServer
from store import db, queries, schema
from store.config import StoreConfig
from store.puller import connect as connect_nats
from store.sink import Sink

SYMBOLS = 500
ACCOUNTS = 20_000


def _market(i: int) -> Event:
    return Event(
        event_type="PRICE_UPDATE", symbol=f"S{i % SYMBOLS}", payload={"px": 100.0 + i, "qty": i}
    )


def _platform(i: int) -> Event:
    """The demo's proportions: market data without an account in TM_HIGH, the rest
    account events over the other three streams (and so in the account table too)."""
    r = i % 20
    if r < 12:
        return _market(i)
    kind = "PNL_CHANGE" if r < 17 else "USER_NOTIFICATION" if r < 19 else "MARGIN_CALL"
    return Event(event_type=kind, account=f"A{i % ACCOUNTS}", payload={"amount": i / 100})


# --mix: "market" is the worst case for the sink (one stream, so one insert at a time);
# "platform" spreads the same count over the four streams as the demo does.
MIXES = {"market": _market, "platform": _platform}


def _pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": round(statistics.median(xs), 2),
        "p99": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = NatsServer(tmp / "nats")
    await server.start_ready()
    await provision.apply_to(server.url)
    cfg = StoreConfig(target=str(tmp / "ch"), batch_rows=args.batch_rows, batch_ms=args.batch_ms)
    client = db.connect(cfg.target)
    schema.migrate(client, cfg.database, cfg.ttl_days)
    out: dict[str, object] = {"events": args.events, "mix": args.mix, "rows": args.rows}
    try:
        async with Mesh.connect(server.url, service="bench") as mesh:
            for i in range(0, args.events, 5000):
                await mesh.publish_many(
                    [MIXES[args.mix](i + j) for j in range(min(5000, args.events - i))]
                )
            nc = await connect_nats(server.url, "mesh", "mesh-dev")
            sink = Sink(nc, lambda: db.connect(cfg.target), cfg)
            stats = sink.stats()
            t0 = time.perf_counter()
            task = asyncio.create_task(sink.run())
            while sum(s.rows for s in stats) < args.events:  # noqa: ASYNC110 - a counter
                await asyncio.sleep(0.01)
            dt = time.perf_counter() - t0
            out["ingest_rows_per_s"] = round(args.events / dt)
            # lag under a steady rate
            step = max(1, args.lag_rate // 20)
            for _ in range(0, args.lag_events, step):
                t = time.perf_counter()
                await mesh.publish_many(
                    [
                        Event(event_type="ORDER_PLACED", account=f"A{j}", symbol="LAG", payload={})
                        for j in range(step)
                    ]
                )
                await asyncio.sleep(max(0.0, step / args.lag_rate - (time.perf_counter() - t)))
            while sum(s.rows for s in stats) < args.events + args.lag_events:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await nc.close()
        lag = client.query(
            f"SELECT quantile(0.99)(dateDiff('millisecond', ts, ingested_at)), "
            f"quantile(0.5)(dateDiff('millisecond', ts, ingested_at)) FROM {cfg.database}.events "
            "WHERE symbol = 'LAG'"
        ).result_rows[0]
        out["lag_ms_p99"], out["lag_ms_p50"] = float(lag[0]), float(lag[1])
        # big table for the queries: generated rows over the last 7 days
        client.command(
            f"INSERT INTO {cfg.database}.events (timestamp, event_id, event_type, domain, symbol, "
            "account, correlation_id, stream, seq, payload) SELECT "
            "toUnixTimestamp64Nano(now64(9)) - number * {step}, "
            "generateUUIDv7(number), 'ORDER_PLACED', 'order', concat('S', toString(number % {s})), "
            "concat('A', toString(cityHash64(number) % {a})), "
            "concat('c-', toString(intDiv(number, 4))), "
            "'TM_GEN', number + 1, '{{\"px\":1}}' FROM numbers({n})".format(
                n=args.rows, s=SYMBOLS, a=ACCOUNTS, step=604_800_000_000_000 // args.rows
            ),
            settings={"max_insert_threads": 2},
        )
        client.command(schema.copy_accounts(cfg.database, "stream = 'TM_GEN'"))
        for table in schema.TABLES:
            client.command(f"OPTIMIZE TABLE {cfg.database}.{table} FINAL")
        rnd = random.Random(1)
        times: dict[str, list[float]] = {
            "by_correlation_id": [],
            "by_account_day": [],
            "by_symbol_hour": [],
        }
        for _ in range(args.repeat):
            k = rnd.randrange(args.rows)
            day = time.time() - rnd.random() * 6 * 86400
            for name, (sql, params) in {
                "by_correlation_id": queries.by_correlation(cfg.database, f"c-{k // 4}"),
                "by_account_day": queries.by_account(
                    cfg.database, f"A{k % ACCOUNTS}", day, day + 86400
                ),
                "by_symbol_hour": queries.by_symbol(
                    cfg.database, f"S{k % SYMBOLS}", day, day + 3600
                ),
            }.items():
                t = time.perf_counter()
                client.query(sql, parameters=params)
                times[name].append((time.perf_counter() - t) * 1000)
        out["query_ms"] = {k: _pct(v) for k, v in times.items()}
    finally:
        client.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    # 1M: a drain of ~10 s, long enough that merges of its parts fall inside (sustained)
    p.add_argument("--events", type=int, default=1_000_000, help="events through JetStream")
    p.add_argument("--mix", choices=sorted(MIXES), default="market", help="what they are")
    p.add_argument("--rows", type=int, default=1_000_000, help="generated rows for queries")
    p.add_argument("--repeat", type=int, default=100)
    p.add_argument("--batch-rows", type=int, default=StoreConfig().batch_rows)
    p.add_argument("--batch-ms", type=int, default=200)
    p.add_argument("--lag-events", type=int, default=5_000)
    p.add_argument("--lag-rate", type=int, default=2_000)


async def main(args: argparse.Namespace) -> int:
    probe = await host.probe_ms()
    print(json.dumps({**await run(args), "host_probe_ms": probe}))
    return 0

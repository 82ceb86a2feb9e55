"""Faults: a SIGKILLed sink and an unreachable ClickHouse lose nothing and duplicate nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from mesh import jsapi, lag
from mesh.client import Mesh, connect_nats
from mesh.events import Event
from mesh.server import NatsServer, free_port
from store import db
from store.config import StoreConfig
from store.service import prometheus, serve_lag
from store.sink import STREAMS
from tests.helpers import eventually, settled
from tests.store.running import running_sink

ROOT = Path(__file__).resolve().parents[2]


def start_store(url: str, path: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node.cli",
            "--url",
            url,
            "store",
            "--target",
            str(path),
            "--http",
            f"127.0.0.1:{port}",
            "--batch-rows",
            "3000",
            "--batch-ms",
            "300",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def stream_last_seqs(url: str) -> dict[str, int]:
    nc = await connect_nats(url)
    try:
        out = {}
        for s in STREAMS:
            info = await jsapi.stream_info(nc, s)
            assert info is not None
            out[s] = int(info["state"]["last_seq"])
        return out
    finally:
        await nc.close()


def table_state(c: Client) -> dict[str, tuple[int, int, int]]:
    rows = c.query(
        "SELECT stream, count(), uniqExact(seq), max(seq) FROM audit.events GROUP BY stream"
    ).result_rows
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


@pytest.mark.slow
async def test_sigkill_mid_batch_then_restart_leaves_table_equal_to_stream(
    fresh_server: NatsServer, tmp_path: Path, tag: str
) -> None:
    port = free_port()
    proc = start_store(fresh_server.url, tmp_path / "ch", port)
    auditor = None
    try:
        async with Mesh.connect(fresh_server.url, service="t") as mesh:
            await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
            auditor = clickhouse_connect.get_client(
                host="127.0.0.1", port=port, username="auditor", password="audit-dev"
            )

            async def publish(n: int) -> None:
                for i in range(0, n, 500):
                    await mesh.publish_many(
                        [
                            Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i + j})
                            for j in range(500)
                        ]
                        + [Event(event_type="MARGIN_CALL", account=tag, payload={"i": i})]
                    )

            await publish(6000)
            await eventually(
                lambda: table_state(auditor).get("TM_HIGH", (0,))[0] > 0,
                30,
                "first batches committed",
            )
            # kill while events keep arriving: a batch is being collected or inserted
            pub = asyncio.create_task(publish(9000))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            await pub
            auditor.close()
            proc = start_store(fresh_server.url, tmp_path / "ch", port)
            await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
            auditor = clickhouse_connect.get_client(
                host="127.0.0.1", port=port, username="auditor", password="audit-dev"
            )
            last = await stream_last_seqs(fresh_server.url)
            want = {s: (n, n, n) for s, n in last.items() if n}

            with contextlib.suppress(AssertionError):
                await eventually(lambda: table_state(auditor) == want, 60, f"table == {want}")
            assert table_state(auditor) == want  # (stream: rows, distinct seqs, max seq)
            dupes = auditor.query("SELECT count() - uniqExact(event_id) FROM audit.events")
            assert dupes.result_rows[0][0] == 0
            # the account table holds exactly the account rows of the main table
            both = auditor.query(
                "SELECT (SELECT groupArraySorted(100000)((stream, seq)) FROM audit.events "
                "WHERE account != ''), (SELECT groupArraySorted(100000)((stream, seq)) "
                "FROM audit.events_by_account)"
            ).result_rows[0]
            assert len(both[0]) == 12 + 18
            assert both[0] == both[1]
    finally:
        if auditor is not None:
            auditor.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


async def consumer_backlog(url: str, stream: str, durable: str) -> int:
    nc = await connect_nats(url)
    try:
        info = await jsapi.call(nc, f"$JS.API.CONSUMER.INFO.{stream}.{durable}", {})
        return int(info["num_pending"]) + int(info["num_ack_pending"])
    finally:
        await nc.close()


async def test_unreachable_store_backlog_drains_afterwards(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    """'Unavailable' is a real failure: while `down`, the sink's client factory points at an
    http:// URL where nothing listens (connection refused), then back at the chDB path."""
    dead = f"http://127.0.0.1:{free_port()}"
    state = {"down": False}

    def connect() -> Client:
        return db.connect(dead if state["down"] else store_cfg.target)

    def rows() -> int:
        q = f"SELECT count(), uniqExact(event_id) FROM {store_cfg.database}.events"
        n, u = client.query(q).result_rows[0]
        assert n == u, "duplicate rows"
        return int(n)

    async with (
        Mesh.connect(fresh_server.url, service="t") as mesh,
        running_sink(fresh_server.url, store_cfg, ("TM_HIGH",), connect) as sink,
    ):
        nc = sink.sinks[0].nc
        ev = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(300)]
        await mesh.publish_many(ev)
        await eventually(lambda: rows() == 300, 30, "300 rows")
        state["down"] = True
        sink.sinks[0]._drop_client()  # next insert reconnects, to the dead URL
        ev = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(2000)]
        await mesh.publish_many(ev)
        stats = sink.sinks[0].stats
        await eventually(lambda: stats.insert_failures >= 3, 30, "failed inserts")
        assert "refused" in stats.last_error.lower() or "connect" in stats.last_error.lower()
        # the backlog is visible: what JetStream has not delivered (the consumer's
        # pending count) plus what the sink took and could not insert (its lag report,
        # which `mesh streams` gathers), together exactly what the table lacks
        durable = sink.sinks[0].durable
        last = (await stream_last_seqs(fresh_server.url))["TM_HIGH"]

        async def backlog() -> tuple[int, int]:  # (held by the store, undelivered)
            reports = [r for r in await lag.gather(nc) if r.source.startswith("store ")]
            assert len(reports) == 1
            undelivered = await consumer_backlog(fresh_server.url, "TM_HIGH", durable)
            return reports[0].lag["TM_HIGH"], undelivered

        lag_sub = await serve_lag(nc, sink, store_cfg)
        try:
            # the sink's prefetched pull may still be arriving: read until both agree
            held, undelivered = await settled(
                backlog, lambda b: sum(b) == last - stats.committed_seq
            )
        finally:
            await lag_sub.unsubscribe()
        assert held > 0
        assert held + undelivered == last - stats.committed_seq
        # and in the endpoint's Prometheus text
        metrics = prometheus(sink)
        assert f'mesh_store_held_events{{stream="TM_HIGH"}} {held}\n' in metrics
        committed = stats.committed_seq
        assert f'mesh_store_committed_seq{{stream="TM_HIGH"}} {committed}\n' in metrics
        assert rows() == 300
        state["down"] = False
        await eventually(lambda: rows() == 2300, 30, "backlog drained")
        await eventually(lambda: stats.committed_seq == last, 10, "all committed")


async def test_nats_restart_mid_drain_loses_no_event_and_duplicates_none(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    """The consumer takes no acks, so deliveries lost with the connection are never sent
    again by JetStream: the sink must notice the reconnect and ask again from the first
    event it does not hold."""
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        await mesh.publish_many(
            [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(6000)]
        )
    async with running_sink(fresh_server.url, store_cfg, ("TM_HIGH",)) as sink:
        stats = sink.sinks[0].stats
        await eventually(lambda: stats.delivered_seq >= 1000, 30, "the drain under way")
        fresh_server.kill()
        fresh_server.start()
        await fresh_server.wait_ready()
        await eventually(lambda: stats.resubscribes >= 1, 30, "the consumer recreated")
        await eventually(lambda: stats.committed_seq == 6000, 60, "all 6,000 committed")
        n, distinct, top = client.query(
            f"SELECT count(), uniqExact(seq), max(seq) FROM {store_cfg.database}.events"
        ).result_rows[0]
        assert (n, distinct, top) == (6000, 6000, 6000)

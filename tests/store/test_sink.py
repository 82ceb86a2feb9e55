"""The sink moves every stored event into the table exactly once."""

from __future__ import annotations

import asyncio

from clickhouse_connect.driver.client import Client
from nats.aio.client import Client as Nats

from mesh.client import Mesh, connect_nats
from mesh.events import Event, encode
from mesh.server import NatsServer
from store import db
from store.config import StoreConfig
from store.puller import Puller
from store.sink import Sink, StreamSink
from tests.helpers import eventually
from tests.store.running import running_sink


def count(client: Client, cfg: StoreConfig) -> int:
    return int(client.query(f"SELECT count() FROM {cfg.database}.events").result_rows[0][0])


async def test_events_of_all_streams_land_once(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        events = [
            Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(1200)
        ]
        events += [
            Event(event_type="MARGIN_CALL", account=tag, payload={"i": i}) for i in range(50)
        ]
        await mesh.publish_many(events)
        async with running_sink(fresh_server.url, store_cfg):
            await eventually(lambda: count(client, store_cfg) >= 1250, 30, "1250 rows")
    rows = client.query(
        f"SELECT toString(event_id), stream, seq, domain, payload FROM {store_cfg.database}.events"
    ).result_rows
    assert sorted(r[0] for r in rows) == sorted(e.event_id for e in events)
    assert {r[1] for r in rows} == {"TM_HIGH", "TM_CRITICAL"}
    by_account = client.query(
        f"SELECT toString(event_id), account FROM {store_cfg.database}.events_by_account"
    ).result_rows
    assert sorted(by_account) == sorted((e.event_id, tag) for e in events if e.account)


async def critical_sink_from_start(nc: Nats, cfg: StoreConfig) -> tuple[StreamSink, Puller]:
    """TM_CRITICAL's sink, its consumer made to deliver from the first event, not started:
    the test drives `_collect` and `_insert` itself."""
    sink = Sink(nc, lambda: db.connect(cfg.target), cfg, streams=("TM_CRITICAL",))
    one = sink.sinks[0]
    one._seen = 0
    return one, await one._subscribe()


async def test_crash_between_the_two_inserts_is_repaired_at_start(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    """The batch reached the main table but not the account table (the process died in
    between): the next start copies exactly the missing rows, once."""
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        await mesh.publish_many(
            [Event(event_type="MARGIN_CALL", account=f"{tag}{i % 3}") for i in range(30)]
            + [Event(event_type="RISK_LIMIT_BREACH", symbol=tag) for _ in range(5)]
        )
    nc = await connect_nats(fresh_server.url)
    try:
        one, puller = await critical_sink_from_start(nc, store_cfg)
        batch = await one._collect(puller)
        await puller.close()
        assert len(batch.lines) == 35
        assert len(batch.accounts) == 30
        batch.accounts = []  # only the first of the two inserts happens
        await asyncio.to_thread(one._insert, batch)
        assert account_rows(client, store_cfg) == []
        for _ in range(2):  # a start, and another start: repaired once, not twice
            assert await asyncio.to_thread(one._recover) == 35
            rows = account_rows(client, store_cfg)
            assert len(rows) == 30
            assert len(set(rows)) == 30
    finally:
        await nc.close()


async def test_a_delivery_taken_by_someone_else_is_noticed_and_delivered_again(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    """Without acks JetStream never redelivers, so a hole in the consumer sequence (here:
    another client pulled from the sink's durable) must make the sink ask again."""
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        await mesh.publish_many([Event(event_type="MARGIN_CALL", account=tag) for _ in range(40)])
    nc = await connect_nats(fresh_server.url)
    try:
        one, puller = await critical_sink_from_start(nc, store_cfg)
        thief = Puller(nc, "TM_CRITICAL", one.durable)
        await thief.start()
        stolen = await thief.fetch(10, 2.0)
        await thief.close()
        assert len(stolen) == 10
        batch = await one._collect(puller)
        await puller.close()
        assert batch.lines == []
        assert one._broken
        puller = await one._subscribe()  # what run() does next
        batch = await one._collect(puller)
        await puller.close()
        assert batch.seqs() == list(range(1, 41))
    finally:
        await nc.close()


def account_rows(client: Client, cfg: StoreConfig) -> list[tuple[str, int]]:
    return [
        (str(r[0]), int(r[1]))
        for r in client.query(
            f"SELECT account, seq FROM {cfg.database}.events_by_account ORDER BY seq"
        ).result_rows
    ]


async def test_malformed_message_is_dropped_and_does_not_block_the_stream(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        await mesh.publish_many([Event(event_type="PRICE_UPDATE", symbol=tag) for _ in range(10)])
        js = mesh.nc.jetstream()
        await js.publish(f"tm.high.market.PRICE_UPDATE.{tag}._", b'{"event_type": "PRICE_UP')
        # a timestamp that looks like one to the sink's fast path but is not a number
        await js.publish(
            f"tm.high.market.PRICE_UPDATE.{tag}._",
            b'{"event_type":"X","timestamp":"abcdefghijklmnopq"}',
        )
        after = [Event(event_type="PRICE_UPDATE", symbol=tag) for _ in range(10)]
        await mesh.publish_many(after)
        async with running_sink(fresh_server.url, store_cfg, ("TM_HIGH",)) as sink:
            stats = sink.sinks[0].stats
            await eventually(lambda: stats.committed_seq == 22, 30, "all 22 messages handled")
    assert stats.malformed_dropped == 2
    rows = client.query(f"SELECT seq FROM {store_cfg.database}.events ORDER BY seq").result_rows
    assert [r[0] for r in rows] == [*range(1, 11), *range(13, 23)]


async def test_event_on_a_subject_the_mesh_does_not_use_is_stored_and_the_stream_flows_on(
    fresh_server: NatsServer, store_cfg: StoreConfig, client: Client, tag: str
) -> None:
    """A foreign publisher may store anything under `tm.high.>`: an event on a short
    subject is kept (the subject tells no domain or account; the account comes from the
    event) and the events after it still land."""
    odd = Event(event_type="ORDER_PLACED", account=tag, symbol=tag, payload={"odd": True})
    async with Mesh.connect(fresh_server.url, service="t") as mesh:
        await mesh.publish(Event(event_type="PRICE_UPDATE", symbol=tag))
        await mesh.nc.jetstream().publish("tm.high.odd", encode(odd))
        await mesh.publish(Event(event_type="PRICE_UPDATE", symbol=tag))
        async with running_sink(fresh_server.url, store_cfg, ("TM_HIGH",)) as sink:
            stats = sink.sinks[0].stats
            await eventually(lambda: stats.committed_seq == 3, 30, "all 3 messages handled")
    db_ = store_cfg.database
    rows = client.query(f"SELECT seq, domain, account FROM {db_}.events ORDER BY seq").result_rows
    assert rows == [(1, "market", ""), (2, "", tag), (3, "market", "")]
    by_account = client.query(f"SELECT seq FROM {db_}.events_by_account").result_rows
    assert by_account == [(2,)]
    assert stats.insert_failures == 0

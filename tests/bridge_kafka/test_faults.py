"""Crashes and outages: the bridge SIGKILLed mid-flow, the Kafka broker down for 30 s."""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import gc
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from bridge_kafka import cli, feed, mapping
from bridge_kafka import config as bcfg
from bridge_kafka.bridge import Bridge
from bridge_kafka.broker import KafkaBroker, create_topics
from mesh import config
from mesh.client import Mesh
from mesh.events import Event, decode
from mesh.server import NatsServer
from mesh.subscriber import Start
from tests.bridge_kafka.conftest import bridge_config
from tests.bridge_kafka.kafka_helpers import produce_events, read_topic, read_until_ids
from tests.helpers import eventually


async def eventually_async(cond: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


N = 6000


def _events(tag: str, side: str) -> list[Event]:
    return [
        Event(event_type="PRICE_UPDATE", symbol=tag, payload={"side": side, "i": i})
        for i in range(N)
    ]


async def _nats_side(mesh: Mesh, tag: str, expect: int) -> list[Any]:
    """Every stored event of the tag, read from the start; then a short wait that proves
    there is no extra (duplicate) copy."""
    out = []
    async with mesh.subscribe(f"tm.*.*.*.{tag}.>", start=Start.all(), ack="none") as sub:
        for _ in range(expect):
            out.append(await sub.next(60))
        with pytest.raises(TimeoutError):
            out.append(await sub.next(1.5))
    return out


@pytest.mark.slow
async def test_bridge_sigkilled_mid_flow_loses_nothing_duplicates_nothing_on_nats(
    nats_server: NatsServer,
    mesh: Mesh,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    bridge_process: Any,
) -> None:
    cfg = bridge_config(kafka, topics, tag, max_inflight_out=2000)
    proc = bridge_process(cfg)
    await proc.start()
    to_nats, to_kafka = _events(tag, "kafka"), _events(tag, "nats")

    async def feed() -> None:
        # In slices, so the kill lands while both directions are moving.
        for i in range(0, N, 500):
            await produce_events(kafka.bootstrap, topics["in"], to_nats[i : i + 500])
            await mesh.publish_many(to_kafka[i : i + 500])

    feeding = asyncio.create_task(feed())
    moved = {"k2n": 0, "n2k": 0}

    async def progressed() -> bool:
        s = await proc.status(mesh.nc)
        moved["k2n"] = s["kafka_to_nats"]["delivered"]
        moved["n2k"] = s["nats_to_kafka"]["delivered"]
        return moved["k2n"] > 1000 and moved["n2k"] > 1000

    # Polled: progress is a count inside another process, announced by nothing.
    await eventually_async(progressed, 60, "both directions to move")
    proc.kill()
    assert moved["k2n"] < N or moved["n2k"] < N, "the kill came too late to test anything"
    await feeding
    await proc.start()

    # NATS side: every event exactly once. Redelivered Kafka records carry the same
    # Nats-Msg-Id (the event id), so JetStream refused the second copies.
    got = await _nats_side(mesh, tag, 2 * N)  # its own N (from NATS) + N from Kafka
    ids = collections.Counter(d.event.event_id for d in got)
    assert set(ids) == {e.event_id for e in to_nats + to_kafka}
    assert max(ids.values()) == 1

    # Kafka side: nothing lost. Duplicates are possible and documented: events Kafka had
    # stored whose JetStream ack the killed bridge never sent are redelivered by the
    # durable consumer and produced again. At most what was in flight (max_ack_pending),
    # always the same event id, so Kafka consumers dedupe on the tm-event-id header.
    want = {e.event_id for e in to_kafka}
    records = await asyncio.to_thread(read_until_ids, kafka.bootstrap, topics["out"], want)
    kafka_ids = collections.Counter(decode(r.value()).event_id for r in records)
    assert set(kafka_ids) == want
    assert len(records) - N <= cfg.max_inflight_out
    for r in records:
        assert dict(r.headers())["tm-event-id"] == decode(r.value()).event_id.encode()
    proc.stop()


@pytest.mark.slow
async def test_kafka_down_30s_bridge_waits_and_resumes(
    nats_server: NatsServer, mesh: Mesh, tmp_path: Path, tag: str
) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    await broker.start_ready(timeout=180)
    try:
        names = {"in": f"in-{tag}", "out": f"out-{tag}", "dlq": f"dlq-{tag}"}
        await asyncio.to_thread(create_topics, broker.bootstrap, {v: 2 for v in names.values()})
        cfg = bridge_config(broker, names, tag)
        first, during, after = (
            [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in r]
            for r in (range(0, 500), range(500, 1500), range(1500, 2000))
        )
        # The Kafka side's own events (other ids): both directions are checked.
        k_first, k_rest = (
            [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"k": i}) for i in r]
            for r in (range(0, 500), range(500, 2000))
        )
        async with (
            Mesh.connect(nats_server.url, service="bridge") as bm,
            Bridge(cfg, bm) as bridge,
        ):
            await mesh.publish_many(first)
            await produce_events(broker.bootstrap, names["in"], k_first)
            m = bridge.metrics
            await eventually(
                lambda: m.nats_to_kafka.delivered == 500 and m.kafka_to_nats.delivered == 500,
                30,
                "the first events both ways",
            )
            broker.stop()
            # NATS keeps taking events while Kafka is away; the bridge holds them unacked.
            await mesh.publish_many(during)
            await eventually(lambda: not m.kafka_up, 30, "health to say Kafka is down")
            assert (await bridge.status())["health"]["down"] == ["kafka"]
            await asyncio.sleep(30)  # the outage itself: what the test is about
            assert m.nats_to_kafka.delivered == 500
            broker.start()
            await broker.wait_ready(120)
            await mesh.publish_many(after)
            await produce_events(broker.bootstrap, names["in"], k_rest)
            await eventually(
                lambda: m.nats_to_kafka.delivered == 2000 and m.kafka_to_nats.delivered == 2000,
                120,
                "everything after the outage",
            )
            assert m.kafka_up
        records = await read_topic(broker.bootstrap, names["out"], 2000)
        assert sorted(decode(r.value()).payload["i"] for r in records) == list(range(2000))
        got = await _nats_side(mesh, tag, 4000)
        assert len({d.event.event_id for d in got}) == 4000
    finally:
        broker.stop()


async def test_health_names_nats_when_nats_is_down(
    fresh_server: NatsServer, kafka: KafkaBroker, topics: dict[str, str], tag: str
) -> None:
    async with (
        Mesh.connect(fresh_server.url, service="bridge") as bm,
        Bridge(bridge_config(kafka, topics, tag), bm) as bridge,
    ):
        m = bridge.metrics
        await eventually(lambda: m.kafka_up and m.nats_up, 30, "both sides up")
        fresh_server.kill()
        await eventually(lambda: not m.nats_up, 10, "health to see NATS down")
        health = (await bridge.status())["health"]
        assert health["down"] == ["nats"]
        assert health["nats"] == "down"
        fresh_server.start()
        await fresh_server.wait_ready()
        await eventually(lambda: m.nats_up, 30, "health to see NATS back")
        assert (await bridge.status())["health"]["status"] == "ok"


def _unread(transport: Any) -> int:
    """Bytes waiting in the socket's receive buffer (FIONREAD)."""
    buf = fcntl.ioctl(transport.get_extra_info("socket").fileno(), termios.FIONREAD, b"\0" * 4)
    return int.from_bytes(buf, sys.byteorder)


@pytest.mark.slow
async def test_connection_dropped_mid_flow_nats_to_kafka_loses_nothing(
    nats_server: NatsServer,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bridge's NATS connection is cut while a backlog streams in (the server stays
    up): what was on the wire is lost, and JetStream redelivers it after ack_wait. The
    bridge's AckAll must not ack past those meanwhile, though later events flow and are
    confirmed: after the reconnect its acks wait (the floors hold) until they are back."""
    cfg = bridge_config(kafka, topics, tag, ack_wait=2.0, inbound=[], max_inflight_out=2000)
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(30_000)]
    async with (
        Mesh.connect(nats_server.url, service="tests") as mesh,
        Mesh.connect(nats_server.url, service="bridge") as bm,
    ):
        sock = bm.nc._transport._io_writer.transport  # type: ignore[union-attr]
        # The bridge stops reading at its 1,000th delivery, half of max_ack_pending:
        # the server has sent (or sends at once) up to 2,000, so the socket holds
        # deliveries whether or not Kafka is confirming yet. A poll for "flowing"
        # raced the flow: on a fast machine the bridge could have taken all 30,000.
        # The events go in once the bridge has started (its consumers made), so no
        # API reply it waits for is left unread.
        _pause_reading_at(monkeypatch, sock, 1000)
        async with Bridge(cfg, bm) as bridge:
            await mesh.publish_many(events)
            m = bridge.metrics.nats_to_kafka
            # The server's next deliveries pile up unread in the socket; then cut it
            # from the client side, unread bytes and all (the server stays up and
            # keeps them as delivered).
            await eventually(lambda: _unread(sock) > 20_000, 10, "deliveries left unread")
            received_at_cut = m.received
            sock.abort()
            want = {e.event_id for e in events}
            records = await asyncio.to_thread(read_until_ids, kafka.bootstrap, topics["out"], want)
            assert {decode(r.value()).event_id for r in records} == want
            assert (await bridge.status())["nats_to_kafka"]["ack_holds"] > 0
            assert received_at_cut < len(events)
            assert m.received > len(events)  # redeliveries: the cut did lose deliveries


def _pause_reading_at(monkeypatch: pytest.MonkeyPatch, transport: Any, n: int) -> None:
    """The bridge's feed stops reading its connection when its `n`th delivery arrives."""
    real = feed.PassThrough.handler
    seen = [0]

    def handler(self: feed.PassThrough, priority: Any, stream: str) -> Any:
        on_msg = real(self, priority, stream)

        def counting(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Any:
            if data:
                seen[0] += 1
                if seen[0] == n:
                    transport.pause_reading()
            return on_msg(subject, reply, data, headers)

        return counting

    monkeypatch.setattr(feed.PassThrough, "handler", handler)


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (negative: none committed)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def _inject_bug(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    event_id: Callable[[tuple[Any, ...]], str],
    boom: str,
    message: str,
    mapped: Callable[[str], None] = lambda _id: None,
) -> None:
    """`mapping.<name>` raises RuntimeError(message) for the event `boom` (a bug no retry
    covers) and maps every other one as before, calling `mapped` with its id first."""
    real = getattr(mapping, name)

    def failing(*args: Any) -> Any:
        this = event_id(args)
        if this == boom:
            raise RuntimeError(message)
        mapped(this)
        return real(*args)

    monkeypatch.setattr(mapping, name, failing)


async def _stops_with(bridge: Bridge, message: str) -> None:
    """The bridge says a direction stopped for good, why, and that its health failed."""
    why = await asyncio.wait_for(bridge.wait_failed(), 30)
    assert message in why
    assert (await bridge.status())["health"]["status"] == "failed"


async def test_a_batch_failing_unexpectedly_stops_commits_and_a_restart_skips_nothing(
    nats_server: NatsServer,
    mesh: Mesh,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failure no retry covers (here: a bug in the mapping, injected for one event).
    # Committing any later batch would skip that one's records for good, so the inbound
    # side must stop committing and say so; a restart then delivers everything, once.
    cfg = bridge_config(kafka, topics, tag)
    before = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(5)]
    after = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(5, 10)]
    boom = before[2].event_id
    later = {e.event_id for e in after}
    handled_later = asyncio.Event()

    def mapped(event_id: str) -> None:
        if event_id in later:
            handled_later.set()

    _inject_bug(
        monkeypatch,
        "event_to_nats",
        lambda args: args[0].event_id,
        boom,
        "injected bug in the mapping",
        mapped,
    )
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm) as bridge,
    ):
        await produce_events(kafka.bootstrap, topics["in"], before)
        await _stops_with(bridge, "injected bug in the mapping")
        # Records after the failure are not handled (so never committed past it); the
        # wait is the time a bridge that went on would need to handle them.
        await produce_events(kafka.bootstrap, topics["in"], after)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(handled_later.wait(), 3)
    stored = await read_topic(kafka.bootstrap, topics["in"], 10)
    boom_at = next(m for m in stored if decode(m.value()).event_id == boom)
    committed = await asyncio.to_thread(_committed, kafka.bootstrap, cfg.group_id, topics["in"], 4)
    assert committed[boom_at.partition()] <= boom_at.offset()

    monkeypatch.undo()
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm),
    ):
        got = await _nats_side(mesh, tag, 10)
    assert [d.event.event_id for d in got] == [e.event_id for e in before + after]


async def test_bridge_run_exits_1_when_a_batch_fails_beyond_retry(
    nats_server: NatsServer,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    gc_restored: None,
) -> None:
    # `mesh bridge run` as its supervisor sees it: the failure ends the process with 1.
    cfg = bridge_config(kafka, topics, tag)
    file = tmp_path / "bridge.toml"
    file.write_text(bcfg.dumps(cfg))

    def failing(*_: Any) -> Any:
        raise RuntimeError("injected bug in the mapping")

    monkeypatch.setattr(mapping, "event_to_nats", failing)
    args = argparse.Namespace(
        file=str(file),
        bootstrap=None,
        url=nats_server.url,
        user=None,
        password=None,
        metrics_file=None,
        direction=None,
    )
    frozen = gc.get_freeze_count()
    run = asyncio.create_task(cli.cmd_run(args, config.MeshConfig()))
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": 0})]
    await produce_events(kafka.bootstrap, topics["in"], events)
    assert await asyncio.wait_for(run, 30) == 1
    assert "injected bug in the mapping" in capsys.readouterr().out
    # The process settled its collector once running (mesh.gcpolicy).
    assert gc.get_freeze_count() > frozen


async def test_the_nats_to_kafka_loop_failing_says_so_and_a_restart_loses_nothing(
    nats_server: NatsServer,
    mesh: Mesh,
    kafka: KafkaBroker,
    topics: dict[str, str],
    tag: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug in the outbound loop (injected for one event): the direction stops, health
    # says `failed`, nothing at or after that event is acked, and a restart sends it all.
    cfg = bridge_config(kafka, topics, tag)
    events = [Event(event_type="PRICE_UPDATE", symbol=tag, payload={"i": i}) for i in range(10)]
    boom = events[4].event_id
    _inject_bug(
        monkeypatch,
        "nats_to_kafka",
        lambda args: args[1].fields.event_id,
        boom,
        "injected bug in the outbound mapping",
    )
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm) as bridge,
    ):
        await mesh.publish_many(events)
        await _stops_with(bridge, "injected bug in the outbound mapping")
    monkeypatch.undo()
    async with (
        Mesh.connect(nats_server.url, service="bridge") as bm,
        Bridge(cfg, bm),
    ):
        records = await asyncio.to_thread(
            read_until_ids, kafka.bootstrap, topics["out"], {e.event_id for e in events}
        )
    got = [decode(r.value()).event_id for r in records]
    assert set(got) == {e.event_id for e in events}
    # The four before the failure may come twice (produced, then redelivered: their
    # ack could not pass the failed one); the failed one and those after it once.
    assert all(got.count(e.event_id) == 1 for e in events[4:])

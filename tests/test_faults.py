"""Durability under crashes: SIGKILL of a single server, and of a node of an R3 cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh import history
from mesh.client import Mesh, connect_nats
from mesh.events import Event
from mesh.fast_batch import FastBatchPublisher
from mesh.server import Cluster, NatsServer
from tests.conftest import provision_streams
from tests.helpers import eventually

pytestmark = pytest.mark.slow


class CriticalPublisher:
    """Streams critical events in small batches and remembers what JetStream acked."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.acked: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            batch = [
                Event(event_type="MARGIN_CALL", account=f"ACC{(n + k) % 37}", payload={"n": n + k})
                for k in range(20)
            ]
            seqs = await self.mesh.publish_many(batch)
            for e, s in zip(batch, seqs, strict=True):
                self.acked[e.event_id] = s
            n += len(batch)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def stored_critical(url: str) -> list[tuple[int, str]]:
    """(sequence, event_id) of everything in TM_CRITICAL, read back from the server."""
    nc = await connect_nats(url)
    try:
        return [(m.seq, m.headers["Nats-Msg-Id"]) async for m in history.scan(nc, "TM_CRITICAL")]
    finally:
        await nc.close()


def assert_every_acked_event_stored_once(
    acked: dict[str, int], stored: list[tuple[int, str]]
) -> None:
    ids = [eid for _, eid in stored]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    at = {eid: seq for seq, eid in stored}
    missing = [eid for eid in acked if eid not in at]
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert all(at[eid] == seq for eid, seq in acked.items())


async def test_acked_critical_events_survive_sigkill_of_the_server(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    await server.start_ready()
    await provision_streams(server.url)
    try:
        async with Mesh.connect(
            server.url, service="tests", ack_timeout=0.5, publish_deadline=60
        ) as mesh:
            pub = CriticalPublisher(mesh)
            pub.start()
            await eventually(lambda: len(pub.acked) >= 3000, 30, "3000 acked events")
            server.kill()
            at_kill = len(pub.acked)
            server.start()
            await server.wait_ready()
            # The publisher resumes by itself: nobody tells it the server came back.
            await eventually(lambda: len(pub.acked) >= at_kill + 3000, 60, "publishing resumed")
            await pub.stop()
            assert mesh.publisher.stats.resent > 0 or mesh.publisher.inflight == 0
        assert_every_acked_event_stored_once(pub.acked, await stored_critical(server.url))
    finally:
        server.stop()


async def test_r3_cluster_keeps_acked_events_when_the_stream_leader_dies(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    await cluster.start_ready()
    try:
        await provision_streams(cluster.urls[0], replicas=3)
        async with Mesh.connect(
            cluster.urls, service="tests", ack_timeout=0.5, publish_deadline=60
        ) as mesh:
            info = await mesh.stream_info("TM_CRITICAL")
            assert info is not None
            assert info["config"]["num_replicas"] == 3
            leader = info["cluster"]["leader"]
            pub = CriticalPublisher(mesh)
            pub.start()
            await eventually(lambda: len(pub.acked) >= 2000, 30, "2000 acked events")
            victim = next(n for n in cluster.nodes if n.name == leader)
            victim.kill()
            at_kill = len(pub.acked)
            await eventually(lambda: len(pub.acked) >= at_kill + 2000, 60, "publishing continued")
            await pub.stop()
        survivor = next(n for n in cluster.nodes if n is not victim)
        assert_every_acked_event_stored_once(pub.acked, await stored_critical(survivor.url))
    finally:
        cluster.stop()


@pytest.mark.parametrize("drop", ["kill", "restart"])
async def test_fast_batches_confirmed_across_a_server_kill_are_stored_once(
    tmp_path: Path, drop: str
) -> None:
    # Fast batches (the Kafka bridge's way in): every batch `publish` confirmed is stored,
    # each event once, whether its frames were lost with the connection (kill) or waited
    # in nats-py's buffer for the reconnect.
    server = NatsServer(tmp_path / "nats")
    await server.start_ready()
    await provision_streams(server.url)
    confirmed: list[str] = []
    try:
        async with Mesh.connect(server.url, service="tests") as mesh:
            fast = FastBatchPublisher(mesh.nc, ack_timeout=0.5, deadline=60)
            await fast.start()
            stop = asyncio.Event()

            async def run() -> None:
                n = 0
                while not stop.is_set():
                    batch = [
                        mesh.prepare(
                            Event(event_type="MARGIN_CALL", account=f"A{k % 37}", payload={"n": k})
                        )
                        for k in range(n, n + 200)
                    ]
                    await fast.publish([(p.subject, p.headers, p.payload) for p in batch])
                    confirmed.extend(p.event.event_id for p in batch)
                    n += len(batch)

            task = asyncio.create_task(run())
            await eventually(lambda: len(confirmed) >= 4000, 30, "4000 confirmed events")
            if drop == "kill":
                server.kill()
            else:
                server.stop()
            at_drop = len(confirmed)
            server.start()
            await server.wait_ready()
            await eventually(lambda: len(confirmed) >= at_drop + 4000, 60, "publishing resumed")
            stop.set()
            await task
            await fast.close()
        stored = [eid for _, eid in await stored_critical(server.url)]
        assert len(stored) == len(set(stored)), "an event was stored twice"
        assert not set(confirmed) - set(stored), "a confirmed event is missing"
    finally:
        server.stop()

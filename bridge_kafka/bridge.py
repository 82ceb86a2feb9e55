"""The bridge: one process, both directions (or one of them), health and metrics.

    async with Bridge(cfg, mesh) as bridge:
        await bridge.wait_closed()

With `part` set, the process runs that direction's rules only: a bridge may run as one
process per direction under one name (decisions §22). Status answers on NATS at
`tmbridge.status.<name>` (`mesh bridge status`; a part also at `...<name>.<part>`), and,
if a path is given, as Prometheus text rewritten every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Self

from confluent_kafka import KafkaError

from bridge_kafka.config import BridgeConfig, DirectionName, status_subject
from bridge_kafka.errors import BridgeConfigError
from bridge_kafka.inbound import Inbound
from bridge_kafka.kafka_io import FutureReport, ProducerThread, Report
from bridge_kafka.metrics import Direction, Metrics
from bridge_kafka.outbound import Outbound, _Pending
from mesh import lag
from mesh.catalog import BUILTIN, Catalog
from mesh.client import Mesh
from mesh.resource import AsyncResource

log = logging.getLogger("bridge_kafka")


class Bridge(AsyncResource):
    def __init__(
        self,
        cfg: BridgeConfig,
        mesh: Mesh,
        *,
        catalog: Catalog = BUILTIN,
        metrics_file: str | Path | None = None,
        part: DirectionName | None = None,
    ) -> None:
        if not cfg.bootstrap:
            raise BridgeConfigError("the bridge is off: set `bootstrap` (Kafka address)")
        configured = cfg.directions
        self.cfg = cfg.only(part) if part is not None else cfg
        self.part = part
        self.mesh = mesh
        self.catalog = catalog
        self.metrics = Metrics(serves=self.cfg.directions, configured=configured, part=part)
        self.metrics_file = Path(metrics_file) if metrics_file else None
        self.producer: ProducerThread | None = None
        self.inbound: Inbound | None = None
        self.outbound: Outbound | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._status_subs: list[Any] = []
        self._lag_subs: list[Any] = []
        self._closed = asyncio.Event()
        self._failed = asyncio.Event()  # a direction stopped for good (metrics.failure: why)

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        self.metrics.nats_up = self.mesh.nc.is_connected
        self.producer = ProducerThread(
            {
                "bootstrap.servers": self.cfg.bootstrap,
                "message.max.bytes": max(self.cfg.max_record_bytes * 2, 1_000_000),
            }
            | self.cfg.kafka,
            loop,
            self._on_reports,
            self.metrics,
        )
        if self.cfg.outbound:
            self.outbound = Outbound(
                self.cfg, self.mesh, self.producer, self.metrics, self._stopped
            )
            await self.outbound.start()
        if self.cfg.inbound:
            self.inbound = Inbound(
                self.cfg, self.mesh, self.catalog, self.producer, self.metrics, self._stopped
            )
            await self.inbound.start()
        subjects = [self.cfg.status_subject]
        if self.part is not None:
            subjects.append(status_subject(self.cfg.name, self.part))
        for subject in subjects:
            self._status_subs.append(await self.mesh.nc.subscribe(subject, cb=self._status))
        # Each direction this process runs answers `mesh streams` with its lag (Kafka:
        # per partition; NATS: per durable consumer, as in the stream table) and figures.
        for name, runs, d in (
            ("kafka -> nats", self.cfg.inbound, self.metrics.kafka_to_nats),
            ("nats -> kafka", self.cfg.outbound, self.metrics.nats_to_kafka),
        ):
            if runs:
                self._lag_subs.append(
                    await lag.serve(
                        self.mesh.nc, f"bridge {self.cfg.name} ({name})", d.lag_now, d.figures
                    )
                )
        await self.mesh.nc.flush()  # subscribed at the server before we say "running"
        self._tasks.append(asyncio.create_task(self._ticker(), name="bridge-metrics"))
        log.info(
            "bridge %s: %d inbound, %d outbound rules, Kafka at %s",
            self.cfg.name,
            len(self.cfg.inbound),
            len(self.cfg.outbound),
            self.cfg.bootstrap,
        )
        return self

    def _on_reports(self, reports: list[tuple[Report, KafkaError | None]]) -> None:
        acks = False
        for report, err in reports:
            if isinstance(report, _Pending):
                assert self.outbound is not None
                self.outbound.on_report(report, err)
                acks = True
            elif isinstance(report, FutureReport):
                report.settle(err)
        if acks and self.outbound is not None:
            self._tasks.append(asyncio.ensure_future(self.outbound.flush_acks()))
            if len(self._tasks) > 64:
                self._tasks = [t for t in self._tasks if not t.done()]

    async def _status(self, msg: Any) -> None:
        await msg.respond(json.dumps(await self.status()).encode())

    async def status(self) -> dict[str, Any]:
        out = self.metrics.status()
        out["name"] = self.cfg.name
        if self.outbound is not None:
            out["nats_to_kafka"]["inflight"] = self.outbound.inflight()
            out["nats_to_kafka"]["ack_holds"] = self.outbound.ack_holds()
            if self.producer is not None:
                out["nats_to_kafka"]["producer_queue"] = self.producer.in_queue()
        return out

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.metrics.nats_up = self.mesh.nc.is_connected
            self.metrics.tick()
            if self.outbound is not None:
                # a hold that ended, with no delivery report since to trigger the ack
                await self.outbound.flush_acks()
                try:
                    self.metrics.nats_to_kafka.lag = await self.outbound.lag()
                except Exception as e:  # NATS down: lag unknown, health says why
                    log.debug("lag: %s", e)
            if self.metrics_file is not None:
                tmp = self.metrics_file.with_suffix(".tmp")
                tmp.write_text(self.metrics.prometheus(self.cfg.name))
                os.replace(tmp, self.metrics_file)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _stopped(self, direction: Direction, name: str, exc: BaseException) -> None:
        """A direction stopped for good (a failure no retry covers): said in health, the
        metrics and the log, and `wait_failed` returns."""
        self.metrics.failure = f"{name} stopped: {exc!r}"
        direction.error(self.metrics.failure)
        log.error("%s", self.metrics.failure, exc_info=exc)
        self._failed.set()

    async def wait_failed(self) -> str:
        """Returns why, once a direction stopped for good (a failure no retry covers: a
        bug); the caller should exit, so a restart redelivers what was not committed or
        acked."""
        await self._failed.wait()
        return self.metrics.failure

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for sub in (*self._status_subs, *self._lag_subs):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.inbound is not None:
            await self.inbound.close()
        if self.outbound is not None:
            await self.outbound.close()
        if self.producer is not None:
            await self.producer.close()
        if self.outbound is not None:
            # what Kafka confirmed while closing: acked now, not redelivered to the next run
            with contextlib.suppress(Exception):
                await self.outbound.flush_acks()
        self._closed.set()

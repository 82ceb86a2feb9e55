"""Counters of one bridge process, as a status dict (`mesh bridge status`) and as
Prometheus text (`--metrics-file`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge_kafka.config import DIRECTIONS, DirectionName


@dataclass
class Direction:
    received: int = 0  # records/deliveries taken from the source
    delivered: int = 0  # confirmed by the destination (JetStream ack / Kafka delivery report)
    skipped_loop: int = 0  # carried the destination's own origin: not sent back
    dlq: int = 0
    errors: int = 0
    # Per partition (Kafka -> NATS: "topic/partition") or per consumer (NATS -> Kafka).
    lag: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    _mark: tuple[float, int] = (0.0, 0)
    rate: float = 0.0

    def tick(self, now: float) -> None:
        t0, n0 = self._mark
        if t0:
            self.rate = (self.delivered - n0) / max(now - t0, 1e-9)
        self._mark = (now, self.delivered)

    def error(self, what: str) -> None:
        self.errors += 1
        self.last_error = what

    async def lag_now(self) -> dict[str, int]:
        """The lag as last refreshed (each second: librdkafka's statistics on the Kafka
        side, the consumers' info on the NATS side), for `mesh streams`."""
        return dict(self.lag)

    def figures(self) -> dict[str, int | float]:
        """What `mesh streams` prints beside the lag."""
        return {
            "per_s": round(self.rate, 1),
            "delivered": self.delivered,
            "errors": self.errors,
            "dlq": self.dlq,
            "skipped_loop": self.skipped_loop,
        }


# How a direction says it stopped for good: (its counters, its name, why).
OnStop = Callable[[Direction, str, BaseException], None]


@dataclass
class Metrics:
    kafka_to_nats: Direction = field(default_factory=Direction)
    nats_to_kafka: Direction = field(default_factory=Direction)
    kafka_up: bool = False
    nats_up: bool = False
    kafka_detail: str = "not connected yet"
    # Why a direction stopped for good (the process should exit and be restarted).
    failure: str = ""
    started: float = field(default_factory=time.time)
    # The directions this process runs, those its config file has rules for, and which
    # one it was started for (None: every direction the file has).
    serves: list[DirectionName] = field(default_factory=lambda: list(DIRECTIONS))
    configured: list[DirectionName] = field(default_factory=lambda: list(DIRECTIONS))
    part: DirectionName | None = None

    def tick(self) -> None:
        now = time.monotonic()
        self.kafka_to_nats.tick(now)
        self.nats_to_kafka.tick(now)

    def health(self) -> dict[str, Any]:
        down = [side for side, up in (("kafka", self.kafka_up), ("nats", self.nats_up)) if not up]
        return {
            "status": "failed" if self.failure else "ok" if not down else "degraded",
            "down": down,
            **({"failure": self.failure} if self.failure else {}),
            "kafka": "up" if self.kafka_up else f"down: {self.kafka_detail}",
            "nats": "up" if self.nats_up else "down",
        }

    def status(self) -> dict[str, Any]:
        def one(d: Direction) -> dict[str, Any]:
            return {
                "received": d.received,
                "delivered": d.delivered,
                "per_s": round(d.rate, 1),
                "skipped_loop": d.skipped_loop,
                "dlq": d.dlq,
                "errors": d.errors,
                "last_error": d.last_error,
                "lag": dict(d.lag),
                "lag_total": sum(d.lag.values()),
            }

        return {
            "health": self.health(),
            "uptime_s": round(time.time() - self.started, 1),
            # The process's CPU so far (all threads; the benchmark's CPU per event).
            "cpu_s": round(time.process_time(), 6),
            "serves": list(self.serves),
            "configured": list(self.configured),
            **{direction: one(getattr(self, direction)) for direction in self.serves},
        }

    def prometheus(self, bridge: str) -> str:
        out: list[str] = []
        for direction in self.serves:
            d: Direction = getattr(self, direction)
            base = f'bridge="{bridge}",direction="{direction}"'
            for name in ("received", "delivered", "skipped_loop", "dlq", "errors"):
                out.append(f"tm_bridge_{name}_total{{{base}}} {getattr(d, name)}")
            out.append(f"tm_bridge_rate_per_s{{{base}}} {d.rate:.1f}")
            for where, lag in sorted(d.lag.items()):
                out.append(f'tm_bridge_lag{{{base},at="{where}"}} {lag}')
        # Series of the process, not of a direction: with one process per direction, each
        # process's series carry its `part`, so the two files do not hold the same series.
        proc = f'bridge="{bridge}"' + (f',part="{self.part}"' if self.part else "")
        for side, up in (("kafka", self.kafka_up), ("nats", self.nats_up)):
            out.append(f'tm_bridge_up{{{proc},side="{side}"}} {int(up)}')
        out.append(f"tm_bridge_process_cpu_seconds_total{{{proc}}} {time.process_time():.3f}")
        # 1 once a direction stopped for good (the process should be restarted)
        out.append(f"tm_bridge_failed{{{proc}}} {int(bool(self.failure))}")
        return "\n".join(out) + "\n"

"""`mesh bridge run` as a separate process: for fault tests (SIGKILL, restart) and for the
benchmark, so the load generator does not share the bridge's interpreter."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from bridge_kafka.config import BridgeConfig, DirectionName, dumps, status_subject
from bridge_kafka.errors import BridgeError

ROOT = Path(__file__).resolve().parents[1]


class BridgeProcess:
    """`mesh bridge run` for `cfg`; with `direction`, for that direction only
    (`--direction`), so two of them run one bridge."""

    def __init__(
        self,
        cfg: BridgeConfig,
        nats_url: str,
        workdir: Path,
        direction: DirectionName | None = None,
    ) -> None:
        self.cfg = cfg
        self.nats_url = nats_url
        self.direction = direction
        stem = cfg.name + (f"-{direction}" if direction else "")
        self.file = workdir / f"{stem}.toml"
        self.file.write_text(dumps(cfg))
        self.log = workdir / f"{stem}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "--url",
                self.nats_url,
                "bridge",
                "run",
                "-f",
                str(self.file),
                *(["--direction", self.direction] if self.direction else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn and wait for its "running" line (nothing else announces it)."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while b"running" not in self.log.read_bytes():
            if self.proc is not None and self.proc.poll() is not None:
                raise BridgeError(f"bridge process exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise BridgeError(f"bridge process not running after {timeout}s; see {self.log}")
            await asyncio.sleep(0.02)

    async def status(self, nc: Client) -> dict[str, Any]:
        """This process's own status (with a direction: not its sibling's)."""
        msg = await nc.request(status_subject(self.cfg.name, self.direction), b"", timeout=2.0)
        out: dict[str, Any] = json.loads(msg.data)
        return out

    async def wait_delivered(
        self, nc: Client, direction: DirectionName, n: int, timeout: float = 60.0
    ) -> dict[str, Any]:
        """This process's status of `direction` once `n` of its events are confirmed by
        the destination. Polled: a count inside another process is announced by nothing."""
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = (await self.status(nc))[direction]
            if status["delivered"] >= n:
                return status
            if time.monotonic() > deadline:
                raise BridgeError(
                    f"bridge {self.cfg.name}: {status['delivered']} of {n} events delivered"
                    f" ({direction}) in {timeout:g} s"
                )
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

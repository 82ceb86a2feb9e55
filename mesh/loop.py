"""The event loop every `mesh` command runs on: uvloop when it is installed (it is a
dependency), asyncio's own with `MESH_EVENT_LOOP=asyncio`.

Measured on the store's sink (docs/decisions.md, "Event loop"): ~10 % less CPU per event
in the process's main thread, the thread that parses every NATS message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("MESH_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # a platform without it (Windows): asyncio's loop
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)

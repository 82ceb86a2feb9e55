"""Strict-priority lanes with a guard against starving the lower ones forever.

`get()` always returns the oldest item of the most urgent non-empty lane, except: when a
lower lane has been passed over `burst` times in a row while it had items waiting, one of
its items goes next. Critical items are never passed over for that guard: a lower lane
waits while critical work is pending, however long.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from mesh.catalog import Priority

T = TypeVar("T")
_CRITICAL = Priority.CRITICAL.rank


class PriorityLanes(Generic[T]):
    def __init__(self, burst: int = 64) -> None:
        self.burst = burst
        self._lanes: list[deque[T]] = [deque() for _ in Priority]
        self._passed_over = [0] * len(self._lanes)
        self._ready = asyncio.Event()
        self._size = 0

    def put(self, priority: Priority, item: T) -> None:
        self._lanes[priority.rank].append(item)
        self._size += 1
        self._ready.set()

    def get_nowait(self) -> T | None:
        if not self._size:
            return None
        lanes = self._lanes
        top = next(i for i, lane in enumerate(lanes) if lane)
        pick = top
        if top != _CRITICAL:
            # Lowest lanes first: the one starved longest is the one most likely to matter.
            for i in range(len(lanes) - 1, top, -1):
                if lanes[i] and self._passed_over[i] >= self.burst:
                    pick = i
                    break
        for i in range(pick + 1, len(lanes)):
            self._passed_over[i] = self._passed_over[i] + 1 if lanes[i] else 0
        self._passed_over[pick] = 0
        self._size -= 1
        if not self._size:
            self._ready.clear()
        return lanes[pick].popleft()

    async def get(self) -> T:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            await self._ready.wait()

    def depth(self, priority: Priority) -> int:
        return len(self._lanes[priority.rank])

    def __len__(self) -> int:
        return self._size

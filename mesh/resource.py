"""The shape every long-lived mesh object shares: `async with x:` is start ... close."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    async def start(self) -> Self:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

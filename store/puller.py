"""Raw JetStream pull: messages straight from the protocol parser, no nats-py Msg objects.

nats-py's pull `fetch` builds a Msg per message and parses its headers line by line; with
the five headers every mesh event carries that capped the sink at ~17k events/s. The sink
needs only subject, reply (stream sequence) and payload, so it sends the pull requests
itself (`$JS.API.CONSUMER.MSG.NEXT`) and takes the messages through `mesh.wire.route`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TypeAlias

from nats.aio.client import Client

from mesh import wire

Raw: TypeAlias = tuple[bytes, bytes, bytes]  # subject, reply (carries the sequences), payload


class Puller:
    def __init__(self, nc: Client, stream: str, durable: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._got: list[Raw] = []
        self._done = asyncio.Event()
        self._want = 0
        self._open = False  # a pull request is outstanding
        self._route: wire.Route | None = None
        self._inbox = ""

    @property
    def buffered(self) -> list[Raw]:
        """Messages received and not yet handed out by `fetch`."""
        return self._got

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._route = await wire.route(self.nc, self._inbox)
        self._route.set_handler(self._on_msg)

    def _on_msg(self, subj: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not reply:  # a status (404 no messages, 408 expired, 409 ...): that pull is over
            self._open = False
            self._done.set()
            return None
        self._got.append((subj, reply, data))
        if len(self._got) >= self._want:
            self._open = False
            self._done.set()
        return None

    async def _request(self, batch: int, timeout: float) -> None:
        self._want = len(self._got) + batch
        self._open = True
        self._done.clear()
        expires = max(int(timeout * 1e9), 10_000_000)
        await self.nc.publish(
            self.subject,
            json.dumps({"batch": batch, "expires": expires}).encode(),
            reply=self._inbox,
        )

    async def fetch(self, batch: int, timeout: float) -> list[Raw]:
        """Messages of one pull of up to `batch` (more if a prefetched pull was larger),
        waiting at most about `timeout` s; [] when none came.

        Messages are never discarded here: whatever arrives after a fetch returned (a pull
        still running when the wait gave up) is handed out by the next one."""
        if not self._open:
            await self._request(batch, timeout)
        if len(self._got) < self._want:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the wait completes, and the sink would never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout + 1.0):
                    await self._done.wait()
            if not self._done.is_set() and not self._got:
                # neither messages nor the server's expiry status: the request died with a
                # connection (nothing answers it any more), so the next fetch asks again
                self._open = False
        got, self._got = self._got, []
        if len(got) >= batch and not self._open:
            # a full pull means a backlog: ask for the next one now, so the server streams
            # it while the caller batches and inserts this one
            await self._request(batch, timeout)
        return got

    async def close(self) -> None:
        if self._route is not None:
            await self._route.close()


async def connect(url: str, user: str, password: str) -> Client:
    """A NATS connection with mesh's fast MSG/HMSG parser, for the sink."""
    nc = Client()
    wire.install_fast_parser(nc)
    await nc.connect(url.split(","), user=user, password=password, max_reconnect_attempts=-1)
    return nc

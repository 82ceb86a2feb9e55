"""Fast-batch publishing (mesh/fast_batch.py) against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mesh import fast_batch, jsapi, wire
from mesh.client import Mesh
from mesh.errors import StreamRejected
from mesh.fast_batch import BatchPublishDisabled, FastBatchPublisher
from mesh.publisher import Item


@pytest.fixture
async def fast(mesh: Mesh) -> AsyncIterator[FastBatchPublisher]:
    p = FastBatchPublisher(mesh.nc)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def stream(mesh: Mesh, tag: str) -> AsyncIterator[str]:
    """A stream of the test's own (subjects `fb.<tag>.>`), fast batches allowed,
    messages up to 1,000 bytes."""
    name = f"FB_{tag}"
    await jsapi.call(
        mesh.nc,
        f"$JS.API.STREAM.CREATE.{name}",
        {
            "name": name,
            "subjects": [f"fb.{tag}.>"],
            "storage": "memory",
            "max_msg_size": 1000,
            "allow_batched": True,
        },
    )
    yield name
    await jsapi.call(mesh.nc, f"$JS.API.STREAM.DELETE.{name}", {})


def item(tag: str, i: int, size: int = 20, msg_id: str | None = None) -> Item:
    headers = f"NATS/1.0\r\nNats-Msg-Id: {msg_id or f'{tag}-{i}'}\r\n\r\n".encode()
    return (f"fb.{tag}.{i % 3}", headers, b"%d|" % i + b"x" * size)


async def stored(mesh: Mesh, name: str) -> list[bytes]:
    """Every message of the stream, in stream order."""
    info = await jsapi.stream_info(mesh.nc, name)
    assert info is not None
    js: Any = mesh.nc.jetstream()
    out: list[bytes] = []
    if info["state"]["messages"] == 0:
        return out
    for seq in range(info["state"]["first_seq"], info["state"]["last_seq"] + 1):
        out.append((await js.get_msg(name, seq)).data)
    return out


async def test_a_batch_is_stored_whole_and_in_order(
    mesh: Mesh, fast: FastBatchPublisher, stream: str, tag: str
) -> None:
    items = [item(tag, i) for i in range(1500)]
    await fast.publish(items)
    assert await stored(mesh, stream) == [payload for _, _, payload in items]


async def test_batches_of_one_and_concurrent_batches(
    mesh: Mesh, fast: FastBatchPublisher, stream: str, tag: str
) -> None:
    await fast.publish([item(tag, 0)])
    batches = [[item(tag, 1 + b * 400 + i) for i in range(400)] for b in range(5)]
    await asyncio.gather(*(fast.publish(b) for b in batches))
    got = await stored(mesh, stream)
    assert len(got) == 2001
    for b in batches:  # each batch in its own order (batches interleave in the stream)
        mine = [p for _, _, p in b]
        assert [p for p in got if p in set(mine)] == mine


async def test_duplicates_inside_a_batch_are_confirmed_and_not_stored_again(
    mesh: Mesh, fast: FastBatchPublisher, stream: str, tag: str
) -> None:
    first = [item(tag, i) for i in range(10)]
    await fast.publish(first)
    # Stored ones first, in the middle and last, as a redelivery after a crash would be.
    again = [first[0], item(tag, 10), first[5], item(tag, 11), first[9]]
    await fast.publish(again)
    await fast.publish([first[3]])  # a batch of one duplicate
    got = await stored(mesh, stream)
    assert got == [p for _, _, p in first] + [item(tag, 10)[2], item(tag, 11)[2]]


async def test_a_refused_message_ends_the_batch_and_names_its_subject(
    mesh: Mesh, fast: FastBatchPublisher, stream: str, tag: str
) -> None:
    items = [item(tag, i) for i in range(3)] + [item(tag, 3, size=2000)]
    items += [item(tag, i) for i in range(4, 6)]
    with pytest.raises(StreamRejected) as e:
        await fast.publish(items)
    assert items[3][0] in str(e.value)
    assert "maximum" in str(e.value)
    # The ones before it are stored, none after it.
    assert await stored(mesh, stream) == [p for _, _, p in items[:3]]


async def test_a_stream_without_fast_batches_refuses_and_stores_nothing(
    mesh: Mesh, fast: FastBatchPublisher, tag: str
) -> None:
    name = f"FBOFF_{tag}"
    await jsapi.call(
        mesh.nc,
        f"$JS.API.STREAM.CREATE.{name}",
        {"name": name, "subjects": [f"fb.{tag}.>"], "storage": "memory"},
    )
    try:
        with pytest.raises(BatchPublishDisabled):
            await fast.publish([item(tag, i) for i in range(5)])
        assert await stored(mesh, name) == []
    finally:
        await jsapi.call(mesh.nc, f"$JS.API.STREAM.DELETE.{name}", {})


async def test_a_lost_answer_sends_the_batch_again_without_storing_twice(
    mesh: Mesh, stream: str, tag: str
) -> None:
    fast = FastBatchPublisher(mesh.nc, ack_timeout=0.5)
    await fast.start()
    real = fast._on_reply
    dropped = 0

    def lose_first_answer(subject: bytes, reply: bytes, data: bytes, h: bytes | None) -> None:
        nonlocal dropped
        if b'"count"' in data and dropped == 0:
            dropped += 1  # as if the connection dropped it
            return
        real(subject, reply, data, h)

    assert fast._route is not None
    fast._route.set_handler(lose_first_answer)
    try:
        items = [item(tag, i) for i in range(100)]
        await fast.publish(items)
    finally:
        await fast.close()
    assert dropped == 1
    assert await stored(mesh, stream) == [p for _, _, p in items]


async def test_a_batch_the_server_lost_is_sent_again_as_a_new_one(
    mesh: Mesh, fast: FastBatchPublisher, stream: str, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after a server restart in the middle of a batch: the server never saw its start,
    # so it answers "batch publish ID unknown" (10208) to the rest; nothing of it stored.
    real = wire.write
    cut = 0

    async def lose_the_start(nc: Any, data: bytes) -> None:
        nonlocal cut
        if cut == 0:
            cut += 1
            data = data[data.index(b"HPUB ", 1) :]  # the first frame (seq 1, start) lost
        await real(nc, data)

    monkeypatch.setattr(fast_batch.wire, "write", lose_the_start)
    items = [item(tag, i) for i in range(50)]
    await fast.publish(items)
    assert cut == 1
    assert await stored(mesh, stream) == [p for _, _, p in items]

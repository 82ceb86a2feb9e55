from __future__ import annotations

import asyncio
from collections import defaultdict

from mesh.client import Mesh
from mesh.events import Event
from mesh.subscriber import Interest

PARTITIONS = 8  # nats-config/accounts.conf partition(8, ...)


async def test_partitioned_parallel_consumers_keep_per_symbol_order(mesh: Mesh, tag: str) -> None:
    symbols = [f"{tag}S{i}" for i in range(10)]
    per_partition: dict[int, list[tuple[str, int]]] = defaultdict(list)
    total = len(symbols) * 1000
    done = asyncio.Event()
    received = 0

    async def consume(p: int, ready: asyncio.Event) -> None:
        nonlocal received
        async with mesh.subscribe(
            Interest(event_type="PRICE_UPDATE"), partition=p, where=f'symbol prefix "{tag}"'
        ) as sub:
            ready.set()
            while not done.is_set():
                d = await sub.next(timeout=30)
                per_partition[p].append((d.event.symbol or "", d.event.payload["i"]))
                assert d.subject.endswith(f".{p}")
                await d.ack()
                received += 1
                if received == total:
                    done.set()

    readies = [asyncio.Event() for _ in range(PARTITIONS)]
    tasks = [asyncio.create_task(consume(p, readies[p])) for p in range(PARTITIONS)]
    await asyncio.gather(*(r.wait() for r in readies))
    # Interleaved across symbols, in order within each symbol.
    events = [
        Event(event_type="PRICE_UPDATE", symbol=s, payload={"i": i})
        for i in range(1000)
        for s in symbols
    ]
    await mesh.publish_many(events)
    await asyncio.wait_for(done.wait(), 60)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    seen_in: dict[str, set[int]] = defaultdict(set)
    by_symbol: dict[str, list[int]] = defaultdict(list)
    for p, items in per_partition.items():
        for symbol, i in items:
            seen_in[symbol].add(p)
            by_symbol[symbol].append(i)
    assert sorted(by_symbol) == sorted(symbols)
    for symbol in symbols:
        assert by_symbol[symbol] == list(range(1000)), f"{symbol} out of order"
        assert len(seen_in[symbol]) == 1, f"{symbol} split across partitions"
    # The work really was spread: more than one partition got symbols.
    assert len([p for p, items in per_partition.items() if items]) > 1

"""Demo traffic: a small simulated market, each service publishing as itself.

Every simulated service connects with its own NATS user from nats-config/accounts.conf,
so the demo also shows the permissions at work: market-data can only publish market
events, trading only orders and risk, and so on.

* market-data: random-walk prices, volumes and trades for a handful of instruments;
* trading: order lifecycles (placed -> partial fills -> filled or cancelled), and now
  and then a risk breach caused by a fill;
* portfolio: reacts to fills with position and PnL updates (caused by the fill, so
  `mesh chain` shows the whole story);
* agent: agent status changes and task completions;
* notification: user notifications on fills, and service health checks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.client import Mesh
from mesh.events import Event
from mesh.subscriber import Interest

SYMBOLS = {
    "AAPL": 189.0,
    "MSFT": 415.0,
    "NVDA": 121.0,
    "TSLA": 248.0,
    "BRK.B": 452.0,
    "EUR/USD": 1.08,
    "ES-Z6": 5980.0,
    "AMZN": 186.0,
}
ACCOUNTS = [f"ACC{i:03d}" for i in range(1, 13)]
SERVICES = ("market-data", "trading", "portfolio", "agent", "notification")


@dataclass
class DemoStats:
    published: dict[str, int] = field(default_factory=dict)

    def count(self, service: str, n: int = 1) -> None:
        self.published[service] = self.published.get(service, 0) + n


class Demo:
    def __init__(
        self,
        url: str,
        *,
        rate: float = 200.0,
        seed: int | None = None,
        on_event: Callable[[str, Event], None] | None = None,
    ) -> None:
        self.url = url
        self.rate = rate  # market data events per second; everything else scales from it
        self.rng = random.Random(seed)
        self.prices = dict(SYMBOLS)
        self.stats = DemoStats()
        self.on_event = on_event or (lambda service, event: None)
        self._meshes: dict[str, Mesh] = {}

    async def _publish(self, service: str, events: list[Event]) -> None:
        await self._meshes[service].publish_many(events)
        self.stats.count(service, len(events))
        for e in events:
            self.on_event(service, e)

    async def run(self) -> None:
        for service in SERVICES:
            self._meshes[service] = await Mesh.connect(
                self.url, service=service, user=service, password=f"{service}-dev"
            ).start()
        try:
            await asyncio.gather(
                self._market(),
                self._trading(),
                self._portfolio(),
                self._agents(),
                self._notifications(),
            )
        finally:
            for m in self._meshes.values():
                await m.close()

    async def _market(self) -> None:
        tick = 0.05
        per_tick = max(1, round(self.rate * tick))
        while True:
            batch = []
            for _ in range(per_tick):
                sym = self.rng.choice(list(self.prices))
                p = self.prices[sym]
                p = max(p * (1 + self.rng.gauss(0, 0.0008)), 0.01)
                self.prices[sym] = p
                batch.append(
                    Event(
                        event_type="PRICE_UPDATE",
                        symbol=sym,
                        payload={
                            "price": round(p, 4),
                            "bid": round(p * 0.9999, 4),
                            "ask": round(p * 1.0001, 4),
                        },
                    )
                )
                if self.rng.random() < 0.1:
                    batch.append(
                        Event(
                            event_type="TRADE_EXECUTION",
                            symbol=sym,
                            payload={"price": round(p, 4), "qty": self.rng.randint(1, 500)},
                        )
                    )
            await self._publish("market-data", batch)
            await asyncio.sleep(tick)

    async def _trading(self) -> None:
        orders: set[asyncio.Task[None]] = set()
        while True:
            await asyncio.sleep(self.rng.expovariate(self.rate / 40))
            task = asyncio.create_task(self._order_lifecycle())
            orders.add(task)
            task.add_done_callback(orders.discard)

    async def _order_lifecycle(self) -> None:
        sym = self.rng.choice(list(self.prices))
        account = self.rng.choice(ACCOUNTS)
        qty = self.rng.choice([10, 50, 100, 250, 1000])
        side = self.rng.choice(["buy", "sell"])
        placed = Event(
            event_type="ORDER_PLACED",
            symbol=sym,
            account=account,
            payload={"side": side, "qty": qty, "limit": round(self.prices[sym], 4)},
        )
        await self._publish("trading", [placed])
        last, filled = placed, 0
        while filled < qty:
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            if self.rng.random() < 0.08:
                await self._publish(
                    "trading",
                    [
                        placed.caused(
                            "ORDER_CANCELLED",
                            symbol=sym,
                            account=account,
                            payload={"filled": filled, "reason": "user"},
                        )
                    ],
                )
                return
            part = min(qty - filled, self.rng.choice([qty // 4 or 1, qty // 2 or 1, qty]))
            filled += part
            kind = "ORDER_FILLED" if filled == qty else "ORDER_PARTIAL_FILL"
            last = last.caused(
                kind,
                symbol=sym,
                account=account,
                payload={
                    "side": side,
                    "qty": part,
                    "filled": filled,
                    "price": round(self.prices[sym], 4),
                },
            )
            await self._publish("trading", [last])
        if self.rng.random() < 0.05:
            kind = self.rng.choice(["RISK_LIMIT_BREACH", "MARGIN_CALL", "POSITION_LIMIT_EXCEEDED"])
            await self._publish(
                "trading",
                [
                    last.caused(
                        kind,
                        symbol=sym,
                        account=account,
                        payload={
                            "limit": 1_000_000,
                            "exposure": round(qty * self.prices[sym] * 40, 2),
                        },
                    )
                ],
            )

    async def _portfolio(self) -> None:
        mesh = self._meshes["portfolio"]
        positions: dict[tuple[str, str], float] = {}
        async with mesh.subscribe(
            Interest(domain="order", event_type="ORDER_FILLED"),
            Interest(domain="order", event_type="ORDER_PARTIAL_FILL"),
            ack="none",
        ) as sub:
            async for d in sub:
                fill = d.event
                key = (fill.account or "_", fill.symbol or "_")
                signed = fill.payload["qty"] * (1 if fill.payload["side"] == "buy" else -1)
                positions[key] = positions.get(key, 0) + signed
                mark = self.prices.get(key[1], fill.payload["price"])
                await self._publish(
                    "portfolio",
                    [
                        fill.caused(
                            "POSITION_UPDATE",
                            symbol=fill.symbol,
                            account=fill.account,
                            payload={"qty": positions[key]},
                        ),
                        fill.caused(
                            "PNL_CHANGE",
                            symbol=fill.symbol,
                            account=fill.account,
                            payload={
                                "unrealized": round(
                                    positions[key] * (mark - fill.payload["price"]), 2
                                )
                            },
                        ),
                    ],
                )

    async def _agents(self) -> None:
        agents = ["momentum-1", "mean-revert-2", "hedger-3"]
        while True:
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            agent = self.rng.choice(agents)
            kind = self.rng.choice(["AGENT_STATUS_CHANGE", "TASK_COMPLETION", "PERFORMANCE_ALERT"])
            await self._publish(
                "agent",
                [
                    Event(
                        event_type=kind,
                        account=self.rng.choice(ACCOUNTS),
                        payload={"agent": agent, "status": self.rng.choice(["running", "idle"])},
                    )
                ],
            )

    async def _notifications(self) -> None:
        mesh = self._meshes["notification"]
        async with mesh.subscribe(Interest(event_type="ORDER_FILLED"), ack="none") as sub:
            health = asyncio.create_task(self._health())
            try:
                async for d in sub:
                    await self._publish(
                        "notification",
                        [
                            d.event.caused(
                                "USER_NOTIFICATION",
                                account=d.event.account,
                                payload={"text": f"{d.event.symbol} order filled"},
                            )
                        ],
                    )
            finally:
                health.cancel()

    async def _health(self) -> None:
        while True:
            await self._publish(
                "notification",
                [
                    Event(event_type="SERVICE_HEALTH_CHECK", payload={"service": s, "ok": True})
                    for s in SERVICES
                ],
            )
            await asyncio.sleep(5)

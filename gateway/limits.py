"""Token buckets for inbound operations and connection attempts."""

from __future__ import annotations

import time


class Bucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def full(self) -> bool:
        now = time.monotonic()
        return self.tokens + (now - self.last) * self.rate >= self.burst


class Buckets:
    """One bucket per key (user, IP); full buckets are forgotten so the map stays small."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._b: dict[str, Bucket] = {}

    def take(self, key: str) -> bool:
        b = self._b.get(key)
        if b is None:
            if len(self._b) > 10_000:
                self._b = {k: v for k, v in self._b.items() if not v.full()}
            b = self._b[key] = Bucket(self.rate, self.burst)
        return b.take()

    def __len__(self) -> int:
        return len(self._b)

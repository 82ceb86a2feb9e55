"""The event catalog: every event type with its domain and priority.

The catalog is data. The built-in table below is the platform specification; a deployment
adds types (or whole domains) in `mesh.toml` and gets a new `Catalog` from `extended()`.
Nothing else in the mesh branches on an event type's name.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from mesh.errors import ConfigError, UnknownEventType


class Priority(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    STANDARD = "standard"
    BACKGROUND = "background"

    @property
    def rank(self) -> int:
        """0 is the most urgent."""
        return _RANK[self]

    @property
    def stream(self) -> str:
        return f"TM_{self.name}"


_RANK = {p: i for i, p in enumerate(Priority)}

PartitionKey = Literal["symbol", "account"]


class Domain(msgspec.Struct, frozen=True):
    name: str
    # Which routing key keeps order for this domain: partitioned consumers never split it.
    partition_by: PartitionKey


class EventTypeSpec(msgspec.Struct, frozen=True):
    name: str
    domain: str
    priority: Priority
    description: str = ""


# priority -> domain -> event types, exactly as the platform specification lists them.
_SPEC: dict[Priority, dict[str, tuple[str, ...]]] = {
    Priority.CRITICAL: {
        "risk": (
            "RISK_LIMIT_BREACH",
            "MARGIN_CALL",
            "POSITION_LIMIT_EXCEEDED",
            "STOP_LOSS_TRIGGERED",
        ),
        "order": ("ORDER_REJECTED_CRITICAL", "ORDER_CANCELLED_SYSTEM"),
    },
    Priority.HIGH: {
        "order": ("ORDER_PLACED", "ORDER_FILLED", "ORDER_PARTIAL_FILL", "ORDER_CANCELLED"),
        "market": ("PRICE_UPDATE", "VOLUME_UPDATE", "ORDER_BOOK_CHANGE", "TRADE_EXECUTION"),
    },
    Priority.STANDARD: {
        "portfolio": ("POSITION_UPDATE", "PNL_CHANGE", "BALANCE_UPDATE", "MARGIN_UPDATE"),
        "agent": ("AGENT_STATUS_CHANGE", "TASK_COMPLETION", "PERFORMANCE_ALERT"),
    },
    Priority.BACKGROUND: {
        "system": ("SERVICE_HEALTH_CHECK", "MAINTENANCE_NOTICE", "ANALYTICS_UPDATE"),
        "notification": ("USER_NOTIFICATION", "SYSTEM_ANNOUNCEMENT", "REPORT_GENERATED"),
    },
}

# Market data is ordered per instrument; everything that belongs to an account (orders,
# risk, positions, notifications) is ordered per account.
_DOMAINS: dict[str, PartitionKey] = {
    "risk": "account",
    "order": "account",
    "market": "symbol",
    "portfolio": "account",
    "agent": "account",
    "system": "symbol",
    "notification": "account",
}


class Catalog:
    """Lookup of event types; immutable once built."""

    def __init__(self, types: Iterable[EventTypeSpec], domains: Iterable[Domain]) -> None:
        self.domains: Mapping[str, Domain] = {d.name: d for d in domains}
        self.types: Mapping[str, EventTypeSpec] = {t.name: t for t in types}
        for t in self.types.values():
            if t.domain not in self.domains:
                raise ConfigError(
                    f"event type {t.name} names domain {t.domain!r}, which is not declared; "
                    f"known domains: {', '.join(sorted(self.domains))}"
                )

    def spec(self, event_type: str) -> EventTypeSpec:
        try:
            return self.types[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def domain_of(self, event_type: str) -> Domain:
        return self.domains[self.spec(event_type).domain]

    def extended(
        self, types: Iterable[EventTypeSpec] = (), domains: Iterable[Domain] = ()
    ) -> Catalog:
        """A new catalog with deployment-specific additions.

        Redefining a built-in type with another domain or priority is refused: producers and
        consumers built against the specification would silently disagree on routing.
        """
        new_types = list(types)
        for t in new_types:
            old = self.types.get(t.name)
            if old is not None and (old.domain, old.priority) != (t.domain, t.priority):
                raise ConfigError(
                    f"event type {t.name} is already {old.priority}/{old.domain}; "
                    "pick a new name instead of re-routing an existing type"
                )
        return Catalog([*self.types.values(), *new_types], [*self.domains.values(), *domains])


def builtin() -> Catalog:
    types = [
        EventTypeSpec(name=name, domain=domain, priority=priority)
        for priority, by_domain in _SPEC.items()
        for domain, names in by_domain.items()
        for name in names
    ]
    domains = [Domain(name=n, partition_by=k) for n, k in _DOMAINS.items()]
    return Catalog(types, domains)


BUILTIN = builtin()

"""Typed errors of the Kafka bridge: each says what went wrong and what to do."""

from __future__ import annotations

from mesh.errors import MeshError


class BridgeError(MeshError):
    """Base of the bridge's errors."""


class KafkaBrokerError(BridgeError):
    """The embedded Kafka broker could not be fetched, formatted or started."""


class BridgeConfigError(BridgeError):
    """The bridge's configuration is invalid; the message names the field."""


class Poison(BridgeError):
    """A record that is not a valid event; it goes to the dead-letter topic/subject."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

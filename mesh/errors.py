"""Typed errors. Each says what went wrong and what to do about it."""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error the mesh raises on purpose."""


class InvalidEvent(MeshError):
    """The event was refused before anything was published."""


class UnknownEventType(InvalidEvent):
    def __init__(self, event_type: str) -> None:
        super().__init__(
            f"unknown event type {event_type!r}: add it to the catalog "
            "(mesh.toml [[catalog.types]]) or use one of `mesh types`"
        )
        self.event_type = event_type


class WrongPriority(InvalidEvent):
    def __init__(self, event_type: str, given: str, expected: str) -> None:
        super().__init__(
            f"event type {event_type} has priority {expected!r} in the catalog, "
            f"the event says {given!r}: leave priority unset or use {expected!r}"
        )


class InvalidToken(InvalidEvent):
    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {field} {value!r}: {reason}")
        self.field = field
        self.value = value


class PayloadTooLarge(InvalidEvent):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"encoded event is {size} bytes, over the server's max_payload of {limit} bytes: "
            "send a reference (object store key, URL) instead of the data"
        )
        self.size = size
        self.limit = limit


class NotSerializable(InvalidEvent):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"payload cannot be encoded as JSON ({detail}): use str, int, float, bool, None, "
            "lists and dicts with string keys"
        )


class MalformedEvent(MeshError):
    """Bytes received from the wire are not a valid event."""


class ConnectFailed(MeshError):
    def __init__(self, servers: list[str], user: str | None, cause: Exception) -> None:
        hint = (
            "check nats.user / nats.password (or MESH_NATS_USER / MESH_NATS_PASSWORD)"
            if "authorization" in str(cause).lower()
            else "is nats-server running there? `mesh up` starts one"
        )
        super().__init__(
            f"cannot connect to NATS at {', '.join(servers)} as {user or 'anonymous'!r}: "
            f"{cause!r}; {hint}"
        )


class PublishError(MeshError):
    """JetStream did not store the event."""


class PublishNotPermitted(PublishError):
    def __init__(self, subject: str, user: str, detail: str) -> None:
        super().__init__(
            f"the NATS server refused publish to {subject!r} for user {user!r}: {detail}; "
            "a service may publish only its own domains (see nats-config/accounts.conf)"
        )
        self.subject = subject
        self.user = user


class PublishTimeout(PublishError):
    def __init__(self, subject: str, seconds: float) -> None:
        super().__init__(
            f"no JetStream acknowledgement for {subject!r} within {seconds:g}s after retries: "
            "the event may not be stored; it is safe to publish it again (same event_id)"
        )


class StreamRejected(PublishError):
    def __init__(self, subject: str, code: int, description: str) -> None:
        super().__init__(f"JetStream rejected {subject!r}: {description} (err_code {code})")
        self.code = code


class ProvisioningError(MeshError):
    """A stream or consumer definition cannot be applied."""


class ConfigError(MeshError):
    """The configuration file or environment is invalid."""


class FilterError(MeshError):
    """A content filter expression is invalid."""


class ServerStartError(MeshError):
    """The embedded nats-server did not start."""

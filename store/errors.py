"""Typed errors of the audit store: each says what went wrong and what to do."""

from __future__ import annotations

from mesh.errors import MeshError


class StoreError(MeshError):
    """Base of the audit store's errors."""


class StoreUnavailable(StoreError):
    """ClickHouse (embedded chDB or a server) could not be reached or refused a write.

    The sink backs off and retries; JetStream keeps the backlog meanwhile."""


class StoreLocked(StoreError):
    """The chDB path is owned by another process (chDB allows one owner per path).

    Query through that process's auditor endpoint (`mesh audit --endpoint`) instead."""


class BadQuery(StoreError):
    """A named query was given arguments it cannot use; the message names them."""


class QueryFailed(StoreError):
    """ClickHouse refused or stopped a query; the message carries its code and reason
    (164 read-only, 396 too many rows, 159 timeout, 62 syntax)."""

"""The JetStream API as plain JSON requests, with its errors typed.

The mesh manages streams through the raw `$JS.API.*` subjects rather than nats-py's
dataclasses so that it sees (and compares) every field the server returns.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from mesh.errors import MeshError

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode

STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014


class JetStreamApiError(MeshError):
    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{subject}: {description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


async def call(
    nc: Client, subject: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    try:
        msg = await nc.request(subject, _encode(body) if body is not None else b"", timeout)
    except NoRespondersError:
        raise JetStreamApiError(subject, 503, 10039, "JetStream not enabled or not ready") from None
    except NatsTimeout:
        raise JetStreamApiError(subject, 408, 0, f"no answer within {timeout}s") from None
    resp = _decode(msg.data)
    err = resp.get("error")
    if err:
        raise JetStreamApiError(
            subject, err.get("code", 0), err.get("err_code", 0), err.get("description", "")
        )
    return resp


async def stream_info(nc: Client, name: str) -> dict[str, Any] | None:
    try:
        return await call(nc, f"$JS.API.STREAM.INFO.{name}")
    except JetStreamApiError as e:
        if e.err_code == STREAM_NOT_FOUND:
            return None
        raise


async def consumer_info(nc: Client, stream: str, name: str, timeout: float = 5.0) -> dict[str, Any]:
    """A consumer's config and state (`num_ack_pending`, `delivered`, `ack_floor`, ...)."""
    return await call(nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}", timeout=timeout)


async def stream_names(nc: Client) -> list[str]:
    resp = await call(nc, "$JS.API.STREAM.NAMES", {})
    return list(resp.get("streams") or [])


async def consumers(nc: Client, stream: str) -> list[dict[str, Any]]:
    resp = await call(nc, f"$JS.API.CONSUMER.LIST.{stream}", {})
    return list(resp.get("consumers") or [])

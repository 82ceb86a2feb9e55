"""Gateway configuration: `gateway.toml`, decoded into typed Structs (typos are reported
with their path). Roles, grants and channels live in a separate permissions file so
operators change who sees what without touching code."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from mesh.errors import ConfigError

HERE = Path(__file__).resolve().parent
DEFAULT_PERMISSIONS = HERE / "permissions.toml"


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True):
    # A JWKS file (RFC 7517): "oct" keys for HS256, "RSA" for RS256, "EC" P-256 for ES256.
    # It is re-read when it changes (key rotation by kid) and when an unknown kid arrives.
    jwks_file: str = ""
    # Convenience for development: one HS256 secret (kid "dev") without a JWKS file.
    hs256_secret: str = ""
    issuer: str = "trademaster"
    audience: str = "mesh-gateway"
    leeway_s: float = 0.0
    required_claims: list[str] = msgspec.field(
        default_factory=lambda: ["sub", "exp", "iat", "iss", "aud", "roles"]
    )
    roles_claim: str = "roles"
    account_claim: str = "account"


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True):
    ops_per_s: float = 50.0  # inbound operations per user (token bucket)
    ops_burst: int = 100
    max_subscriptions: int = 100  # per connection
    max_connections_per_user: int = 20
    connects_per_s_per_ip: float = 50.0
    connect_burst_per_ip: int = 200
    max_frame_bytes: int = 64 * 1024  # larger inbound frames get an error frame
    # The ASGI server's own limit; between max_frame_bytes and this, an error frame.
    # Above it the server closes with 1009 (tests/gateway/test_frames_limits.py, both
    # servers; with Quart's websocket wrapper the connection was seen to hang instead).
    hard_frame_bytes: int = 16 * 1024 * 1024
    max_resume_events: int = 200_000  # per subscribe; beyond: ask for a snapshot instead


class QueueSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Market data beyond this many queued for one session is conflated per symbol.
    conflate_after: int = 1000
    # Distinct market keys queued at most; the oldest goes (counted as conflated).
    max_market: int = 100_000
    # Must-deliver events (critical, orders, portfolio, notifications): a session with
    # more queued, or whose oldest waited longer, is closed (4008) so the client resumes.
    max_must: int = 50_000
    deliver_within_s: float = 10.0
    max_batch: int = 64  # events per frame when the rate is high
    max_batch_bytes: int = 256 * 1024


class TlsSettings(msgspec.Struct, forbid_unknown_fields=True):
    cert_file: str = ""
    key_file: str = ""


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8765
    reuse_port: bool = False
    instance: str = ""
    heartbeat_s: float = 10.0
    # Non-critical events are flushed flush_ms after the first of them is queued (one
    # batch frame per session per window); critical events are sent at once. 0: every
    # event is sent as it comes. Each frame costs the gateway and the client a syscall,
    # so the window trades frames for latency: 15 ms gave a lower high-priority p99 than
    # 20 at 1,000 clients for ~15% more frames (docs/gateway.md, 2026-11-27); once the
    # frames were shared (window chunks), 10 ms gave a lower one than 15 for ~12% more
    # frames, and 7 ms no lower than 10 for ~10% more gateway CPU (2026-11-28).
    flush_ms: float = 10.0
    idle_timeout_s: float = 30.0  # no inbound frame for this long: peer considered dead
    drain_timeout_s: float = 5.0
    # ASGI server: "uvicorn" (default: 15 us of CPU per WebSocket frame sent, measured)
    # or "hypercorn" (26 us); the same app on both, see docs/gateway.md.
    server: str = "uvicorn"
    # /ws through Quart's websocket wrapper instead of the bare ASGI handler
    # (gateway/asgi_ws.py): slower per frame, kept to compare (docs/gateway.md).
    quart_ws: bool = False
    # permessage-deflate costs a zlib pass per recipient per frame: off by default.
    compression: bool = False
    permissions_file: str = str(DEFAULT_PERMISSIONS)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    queues: QueueSettings = msgspec.field(default_factory=QueueSettings)
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)


def load(path: str | Path | None) -> GatewaySettings:
    if not path:
        return GatewaySettings()
    try:
        raw = tomllib.loads(Path(path).read_text())
        return msgspec.convert(raw.get("gateway", raw), GatewaySettings)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"gateway config {path}: {e}") from e

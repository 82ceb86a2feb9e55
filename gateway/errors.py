"""Typed gateway errors. Each carries the WebSocket close code (or error-frame code) a
client sees, and a reason that says what went wrong and what to do about it."""

from __future__ import annotations

from mesh.errors import MeshError

# Close codes (4000-4999 are for applications, RFC 6455 section 7.4.2).
NO_TOKEN = 4001
BAD_TOKEN = 4002  # malformed, bad signature, unknown key
EXPIRED = 4003
NOT_YET_VALID = 4004
WRONG_ISSUER_OR_AUDIENCE = 4005
ALGORITHM_REFUSED = 4006  # alg=none, algorithm confusion, algorithm not configured
MISSING_CLAIMS = 4007
SLOW_CONSUMER = 4008  # must-deliver events could not be delivered in bounds: resume
TOO_MANY_CONNECTIONS = 4009
CONNECT_RATE = 4010
IDLE_TIMEOUT = 4011
TOKEN_SUBJECT_CHANGED = 4012  # refresh with another user's token
DRAINING = 1012  # "service restart": reconnect (elsewhere) with the resume point


class GatewayError(MeshError):
    """A refusal that closes the connection: `code` is the WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # close reasons are limited to 123 bytes


class AuthError(GatewayError):
    pass


class RequestError(MeshError):
    """A refused request: answered with an error frame, the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

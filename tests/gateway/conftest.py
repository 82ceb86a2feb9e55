"""Real gateway processes (`python -m node.cli gateway`) against the session's NATS, with
keys made here: an HS256 secret, an RSA and an EC key in a JWKS file."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import ClientConnection, connect

from mesh.server import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
HS_SECRET = b"gateway-tests-secret-0123456789abcdef-0123456789abcdef-01234567"
ISS, AUD = "trademaster", "mesh-gateway"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    jwks_path: Path

    @property
    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, alg: str = "HS256", kid: str | None = "default", ttl: float = 600,
              drop: tuple[str, ...] = (), key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": "alice", "roles": ["trader"], "account": "ACC1",
                                "iat": now, "exp": now + ttl, "iss": ISS, "aud": AUD}
        body.update(claims)
        for c in drop:
            body.pop(c, None)
        if kid == "default":
            kid = {"HS256": "hs1", "RS256": "rsa1", "ES256": "ec1"}[alg]
        if key is None:
            key = {"HS256": HS_SECRET, "RS256": self.rsa, "ES256": self.ec}[alg]
        headers = {"kid": kid} if kid else None
        return jwt.encode(body, key, algorithm=alg, headers=headers)


def write_jwks(path: Path, keys: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": keys}))
    os.replace(tmp, path)


def jwk_of(kid: str, key: Any) -> dict[str, Any]:
    if isinstance(key, bytes):
        return {"kty": "oct", "kid": kid, "alg": "HS256", "k": _b64(key)}
    d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())
                   if isinstance(key, rsa.RSAPrivateKey)
                   else jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    d["kid"] = kid
    d["alg"] = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return d


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    k = Keys(rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()),
             d / "jwks.json")
    write_jwks(k.jwks_path, [jwk_of("hs1", HS_SECRET), jwk_of("rsa1", k.rsa),
                             jwk_of("ec1", k.ec)])
    return k


@dataclass
class GatewayProc:
    proc: subprocess.Popen[str]
    port: int
    scheme: str = "ws"
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"{'https' if self.scheme == 'wss' else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def write_config(path: Path, keys: Keys, extra: str = "") -> Path:
    # GATEWAY_TEST_SERVER=hypercorn runs the suite against the app on Hypercorn.
    server = os.environ.get("GATEWAY_TEST_SERVER", "uvicorn")
    path.write_text(f"""
[gateway]
heartbeat_s = 2
server = "{server}"
{extra}
[gateway.auth]
jwks_file = "{keys.jwks_path}"
issuer = "{ISS}"
audience = "{AUD}"
""")
    return path


def start_gateway(nats_url: str, config: Path, port: int | None = None,
                  tls: bool = False, instance: str | None = None,
                  reuse_port: bool = False) -> GatewayProc:
    port = port or free_port()
    proc = subprocess.Popen(
        [PY, "-m", "node.cli", "--url", nats_url, "gateway", "--gateway-config", str(config),
         "--port", str(port), "--instance", instance or f"gw-{port}",
         *(["--reuse-port"] if reuse_port else [])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    g = GatewayProc(proc, port, "wss" if tls else "ws")
    assert proc.stdout is not None
    # The process prints one line once it listens: wait for that line, not for time.
    for line in proc.stdout:
        g.lines.append(line)
        if "gateway listening" in line:
            break
    else:
        raise AssertionError("gateway did not start:\n" + "".join(g.lines))
    return g


@pytest.fixture(scope="session")
def gw_config(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    # Generous limits: the shared gateway serves every test; limit tests use their own.
    return write_config(tmp_path_factory.mktemp("gw") / "gateway.toml", keys, """
[gateway.limits]
connects_per_s_per_ip = 100000.0
connect_burst_per_ip = 100000
ops_per_s = 100000.0
ops_burst = 100000
max_connections_per_user = 100000
""")


@pytest.fixture(scope="session")
def gateway(nats_server: NatsServer, gw_config: Path) -> Iterator[GatewayProc]:
    g = start_gateway(nats_server.url, gw_config)
    yield g
    g.stop()


Connect = Callable[..., Any]


@pytest.fixture
async def client(gateway: GatewayProc, keys: Keys) -> AsyncIterator[Connect]:
    """`await client(token=..., how="header"|"subprotocol"|"query")` -> an open connection
    whose first frame (status connected) has been read; all are closed after the test."""
    opened: list[ClientConnection] = []

    async def open_(token: str | None = None, how: str = "header", url: str | None = None,
                    **kw: Any) -> ClientConnection:
        token = keys.token() if token is None else token
        target = url or gateway.url
        headers = {}
        subprotocols = None
        if how == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif how == "subprotocol":
            subprotocols = ["mesh.v1", f"bearer.{token}"]
        else:
            target += f"?token={token}"
        ws = await connect(target, additional_headers=headers,
                           subprotocols=subprotocols, max_size=None, **kw)  # type: ignore[arg-type]
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        await ws.close()


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    import asyncio

    raw = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(raw)  # type: ignore[no-any-return]


async def recv_until(ws: ClientConnection, pred: Callable[[dict[str, Any]], bool],
                     timeout: float = 10.0) -> dict[str, Any]:
    """Frames are read (heartbeats skipped) until one matches."""
    import asyncio

    async def loop() -> dict[str, Any]:
        while True:
            f = json.loads(await ws.recv())
            if pred(f):
                return f  # type: ignore[no-any-return]

    return await asyncio.wait_for(loop(), timeout)


def events_of(frame: dict[str, Any]) -> list[dict[str, Any]]:
    if frame.get("type") == "event":
        return [frame]
    if frame.get("type") == "batch":
        return list(frame["events"])
    return []


async def closed(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:
    """Reads until the server closes the connection; (close code, reason)."""
    import asyncio

    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as e:
        rcvd = e.rcvd
    assert rcvd is not None, "closed without a close frame"
    return rcvd.code, rcvd.reason

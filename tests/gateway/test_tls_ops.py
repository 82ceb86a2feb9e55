"""TLS 1.3 only when a certificate is configured; /healthz and /metrics."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from mesh.server import NatsServer
from tests.gateway.conftest import (
    GatewayProc,
    Keys,
    recv_json,
    recv_until,
    start_gateway,
    write_config,
)


def make_cert(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_gateway(nats_server: NatsServer, keys: Keys,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProc, Path]]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = make_cert(d)
    cfg = write_config(d / "gateway.toml", keys, f"""
[gateway.tls]
cert_file = "{cert}"
key_file = "{key}"
""")
    g = start_gateway(nats_server.url, cfg, tls=True)
    yield g, cert
    g.stop()


def _ctx(cert: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = version
    return ctx


async def test_tls12_refused_tls13_served(tls_gateway: tuple[GatewayProc, Path],
                                          keys: Keys) -> None:
    g, cert = tls_gateway
    headers = {"Authorization": f"Bearer {keys.token()}"}
    # The server aborts the handshake: a protocol alert or a reset, depending on timing.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await connect(g.url, ssl=_ctx(cert, ssl.TLSVersion.TLSv1_2), additional_headers=headers)
    async with connect(g.url, ssl=_ctx(cert, ssl.TLSVersion.TLSv1_3),
                       additional_headers=headers) as ws:
        assert (await recv_json(ws))["state"] == "connected"
        sslobj = ws.transport.get_extra_info("ssl_object")
        assert sslobj.version() == "TLSv1.3"


def test_healthz_and_metrics(gateway: GatewayProc) -> None:
    body = json.loads(urllib.request.urlopen(gateway.http + "/healthz", timeout=5).read())
    assert body["nats"] == "ok"
    assert body["jetstream"] == "ok"
    text = urllib.request.urlopen(gateway.http + "/metrics", timeout=5).read().decode()
    for name in ("gateway_connections", "gateway_shared_subscriptions",
                 "gateway_conflated_total", 'gateway_dropped_total{kind="critical"} 0'):
        assert name in text


async def test_healthz_names_the_dependency_that_is_down(
    fresh_server: NatsServer, gw_config: Path
) -> None:
    g = start_gateway(fresh_server.url, gw_config)
    try:
        fresh_server.kill()

        def status() -> tuple[int, dict]:
            try:
                r = urllib.request.urlopen(g.http + "/healthz", timeout=5)
                return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        async def down() -> tuple[int, dict]:
            while True:  # polling an HTTP endpoint: nothing announces the change
                code, body = await asyncio.to_thread(status)
                if code == 503:
                    return code, body
                await asyncio.sleep(0.1)

        _code, body = await asyncio.wait_for(down(), 15)
        assert body["nats"] == "down"
        assert "unknown" in body["jetstream"]
    finally:
        g.stop()


async def test_clients_told_when_nats_goes_down_and_comes_back(
    fresh_server: NatsServer, gw_config: Path, keys: Keys
) -> None:
    g = start_gateway(fresh_server.url, gw_config)
    try:
        async with connect(g.url, additional_headers={
                "Authorization": f"Bearer {keys.token()}"}) as ws:
            assert (await recv_json(ws))["state"] == "connected"
            fresh_server.kill()
            f = await recv_until(ws, lambda f: f.get("type") == "status", 15)
            assert f == {"type": "status", "state": "degraded", "dependency": "nats",
                         "connected": False}
            fresh_server.start()
            await fresh_server.wait_ready()
            f = await recv_until(ws, lambda f: f.get("type") == "status", 30)
            assert f == {"type": "status", "state": "ok", "dependency": "nats",
                         "connected": True}
    finally:
        g.stop()

"""Every authentication path and refusal, against a real gateway process."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.gateway.conftest import (
    HS_SECRET,
    Connect,
    Keys,
    closed,
    jwk_of,
    recv_json,
    recv_until,
    write_jwks,
)


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
@pytest.mark.parametrize("how", ["header", "subprotocol", "query"])
async def test_valid_token_is_accepted_by_every_transport(
    client: Connect, keys: Keys, alg: str, how: str
) -> None:
    ws = await client(keys.token(alg), how=how)
    hello = await recv_json(ws)
    assert hello["state"] == "connected"
    assert hello["user"] == "alice"
    if how == "subprotocol":
        assert ws.subprotocol == "mesh.v1"


def _unsigned(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("missing", 4001, "no token"),
        ("garbage", 4002, "malformed"),
        ("bad_signature", 4002, "bad signature"),
        ("alg_none", 4006, "alg=none"),
        ("confusion_kid", 4006, "HS256 refused for key 'rsa1'"),
        ("confusion_nokid", 4002, "bad signature"),
        ("expired", 4003, "expired"),
        ("not_yet_valid", 4004, "not yet valid"),
        ("wrong_issuer", 4005, "issuer"),
        ("wrong_audience", 4005, "audience"),
        ("missing_sub", 4007, "sub"),
        ("missing_roles", 4007, "roles"),
        ("missing_exp", 4007, "exp"),
        ("unknown_kid", 4002, "unknown key id"),
        ("hs384", 4006, "HS384"),
    ],
)
async def test_rejections_have_clear_close_codes(
    client: Connect, keys: Keys, case: str, code: int, reason: str
) -> None:
    now = int(time.time())
    token = {
        "missing": "",
        "garbage": "not.a.jwt",
        "bad_signature": keys.token("HS256", key=b"another-secret-of-sufficient-length!"),
        "alg_none": _unsigned({"sub": "alice", "roles": ["admin"], "exp": now + 60}),
        # The RSA public key used as an HMAC secret: refused before any signature check.
        "confusion_kid": _hmac_with_pem(keys, kid="rsa1"),
        "confusion_nokid": _hmac_with_pem(keys, kid=None),
        "expired": keys.token(ttl=-5),
        "not_yet_valid": keys.token(nbf=now + 3600),
        "wrong_issuer": keys.token(iss="evil"),
        "wrong_audience": keys.token(aud="other-service"),
        "missing_sub": keys.token(drop=("sub",)),
        "missing_roles": keys.token(drop=("roles",)),
        "missing_exp": keys.token(drop=("exp",)),
        "unknown_kid": keys.token(kid="nope"),
        "hs384": jwt.encode({"sub": "a"}, HS_SECRET, algorithm="HS384"),
    }[case]
    ws = await client(token, how="header" if token else "query")
    got_code, got_reason = await closed(ws)
    assert got_code == code
    assert reason.lower() in got_reason.lower()


def _hmac_with_pem(keys: Keys, kid: str | None) -> str:
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    now = int(time.time())
    claims = {"sub": "mallory", "roles": ["admin"], "iat": now, "exp": now + 60,
              "iss": "trademaster", "aud": "mesh-gateway"}
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    signing = f"{enc(json.dumps(header).encode())}.{enc(json.dumps(claims).encode())}"
    sig = hmac.new(keys.rsa_public_pem, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{enc(sig)}"


async def test_key_rotation_by_kid(client: Connect, keys: Keys) -> None:
    """A key added to the JWKS file is used without a restart; a removed one is refused."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    new = rsa.generate_private_key(65537, 2048)
    original = json.loads(keys.jwks_path.read_text())["keys"]
    write_jwks(keys.jwks_path, [*original, jwk_of("rsa2", new)])
    try:
        ws = await client(keys.token("RS256", kid="rsa2", key=new))
        assert (await recv_json(ws))["state"] == "connected"
    finally:
        write_jwks(keys.jwks_path, original)
    ws = await client(keys.token("RS256", kid="rsa2", key=new))
    assert (await closed(ws))[0] == 4002


async def test_expiry_enforced_on_live_connection(client: Connect, keys: Keys) -> None:
    ws = await client(keys.token(ttl=2))
    assert (await recv_json(ws))["state"] == "connected"
    code, reason = await closed(ws)
    assert code == 4003
    assert "expired" in reason


async def test_refresh_in_band_extends_the_session(client: Connect, keys: Keys) -> None:
    ws = await client(keys.token(ttl=2))
    await recv_json(ws)
    await ws.send(json.dumps({"op": "refresh", "token": keys.token(ttl=600)}))
    f = await recv_until(ws, lambda f: f.get("state") == "refreshed")
    assert f["expires"] > time.time() + 500
    # Past the first token's expiry the connection still answers.
    await recv_until(ws, lambda f: f.get("type") == "ping", timeout=10)
    await recv_until(ws, lambda f: f.get("type") == "ping", timeout=10)
    await ws.send(json.dumps({"op": "ping", "id": "p1"}))
    assert (await recv_until(ws, lambda f: f.get("type") == "pong"))["id"] == "p1"


async def test_refresh_with_bad_or_foreign_token_is_refused(client: Connect, keys: Keys) -> None:
    ws = await client()
    await recv_json(ws)
    await ws.send(json.dumps({"op": "refresh", "token": keys.token(ttl=-1)}))
    f = await recv_until(ws, lambda f: f.get("type") == "error")
    assert f["code"] == "refresh_refused"
    assert "expired" in f["message"]
    await ws.send(json.dumps({"op": "refresh", "token": keys.token(sub="bob")}))
    f = await recv_until(ws, lambda f: f.get("type") == "error")
    assert f["code"] == "refresh_refused"
    assert "another user" in f["message"]


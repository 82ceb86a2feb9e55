"""JWT verification: which keys, which algorithms, and a close code for every refusal.

The algorithm is decided by the key, never by the token: a key's algorithm comes from its
JWKS entry (kty/alg), and a token whose header names another algorithm is refused before
any signature check. That is what stops `alg=none` and algorithm confusion (an HS256 token
"signed" with the RSA public key as the HMAC secret).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import jwt

from gateway import errors as E
from gateway.config import AuthSettings

ALGORITHMS = {"HS256", "RS256", "ES256"}


@dataclass(frozen=True)
class Principal:
    """Who is connected: from a verified token."""

    user: str
    roles: tuple[str, ...]
    accounts: tuple[str, ...]
    expires: float  # epoch seconds
    claims: dict[str, Any]


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    key: Any


class KeySet:
    """Keys by kid from a JWKS file (re-read on change) plus an optional dev HS256 secret."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._keys: dict[str, Key] = {}
        self._mtime: tuple[int, int, int] = (0, 0, 0)
        if settings.hs256_secret:
            self._static = {"dev": Key("dev", "HS256", settings.hs256_secret.encode())}
        else:
            self._static = {}
        self.reload(force=True)

    def reload(self, force: bool = False) -> None:
        path = self._settings.jwks_file
        if not path:
            return
        try:
            st = os.stat(path)  # a stat per connect is cheap, and rotation takes effect at once
            mtime = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return  # keep the keys we have: a file being replaced is briefly absent
        if mtime == self._mtime and not force:
            return
        with open(path) as f:
            data = json.load(f)
        keys: dict[str, Key] = {}
        for jwk in data.get("keys", []):
            pk = jwt.PyJWK(jwk)
            alg = pk.algorithm_name
            if alg not in ALGORITHMS:
                continue
            kid = jwk.get("kid") or f"{alg}-{len(keys)}"
            key: Any = pk.key
            if jwk.get("kty") == "oct":
                key = base64.urlsafe_b64decode(jwk["k"] + "=" * (-len(jwk["k"]) % 4))
            keys[kid] = Key(kid, alg, key)
        self._keys = keys
        self._mtime = mtime

    def all(self) -> dict[str, Key]:
        return {**self._static, **self._keys}

    def candidates(self, kid: str | None, alg: str) -> list[Key]:
        self.reload()
        keys = self.all()
        if kid is not None:
            key = keys.get(kid)
            if key is None:
                self.reload(force=True)  # rotation: a new kid may have just been added
                key = self.all().get(kid)
            if key is None:
                raise E.AuthError(E.BAD_TOKEN, f"unknown key id {kid!r}: get a fresh token")
            if key.alg != alg:
                raise E.AuthError(
                    E.ALGORITHM_REFUSED,
                    f"algorithm {alg} refused for key {kid!r} ({key.alg} only)",
                )
            return [key]
        found = [k for k in keys.values() if k.alg == alg]
        if not found:
            raise E.AuthError(E.ALGORITHM_REFUSED, f"algorithm {alg} is not configured")
        return found


class Verifier:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.keys = KeySet(settings)

    def verify(self, token: str | None) -> Principal:
        s = self.settings
        if not token:
            raise E.AuthError(
                E.NO_TOKEN,
                "no token: send Authorization: Bearer, subprotocol bearer.<jwt> or ?token=",
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise E.AuthError(E.BAD_TOKEN, f"malformed token: {e}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise E.AuthError(E.ALGORITHM_REFUSED, "alg=none refused: tokens must be signed")
        if alg not in ALGORITHMS:
            raise E.AuthError(E.ALGORITHM_REFUSED, f"algorithm {alg} refused (HS256/RS256/ES256)")
        kid = header.get("kid")
        claims: dict[str, Any] | None = None
        last: Exception | None = None
        for key in self.keys.candidates(kid if isinstance(kid, str) else None, alg):
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.alg],
                    audience=s.audience or None,
                    issuer=s.issuer or None,
                    leeway=s.leeway_s,
                    options={"require": list(s.required_claims)},
                )
                break
            except jwt.InvalidSignatureError as e:
                last = e
                continue
            except jwt.ExpiredSignatureError:
                raise E.AuthError(E.EXPIRED, "token expired: get a new one") from None
            except jwt.ImmatureSignatureError:
                raise E.AuthError(E.NOT_YET_VALID, "token not yet valid (nbf/iat)") from None
            except jwt.InvalidIssuerError:
                raise E.AuthError(E.WRONG_ISSUER_OR_AUDIENCE, "wrong issuer") from None
            except jwt.InvalidAudienceError:
                raise E.AuthError(E.WRONG_ISSUER_OR_AUDIENCE, "wrong audience") from None
            except jwt.MissingRequiredClaimError as e:
                raise E.AuthError(E.MISSING_CLAIMS, f"missing claim {e.claim!r}") from None
            except jwt.InvalidKeyError as e:
                raise E.AuthError(E.ALGORITHM_REFUSED, f"key refused: {e}") from None
            except jwt.InvalidTokenError as e:
                raise E.AuthError(E.BAD_TOKEN, f"invalid token: {e}") from None
        if claims is None:
            raise E.AuthError(E.BAD_TOKEN, f"bad signature{': ' + str(last) if last else ''}")
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        s = self.settings
        roles = claims.get(s.roles_claim)
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise E.AuthError(E.MISSING_CLAIMS, f"claim {s.roles_claim!r}: a list of role names")
        acct = claims.get(s.account_claim, [])
        accounts = [acct] if isinstance(acct, str) else acct
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            raise E.AuthError(E.MISSING_CLAIMS, f"claim {s.account_claim!r}: string or list")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise E.AuthError(E.MISSING_CLAIMS, "missing claim 'sub'")
        exp = claims.get("exp")
        return Principal(
            sub,
            tuple(roles),
            tuple(accounts),
            float(exp) if isinstance(exp, (int, float)) else float("inf"),
            claims,
        )


def token_from(headers: Any, args: Any, subprotocols: list[str]) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept). Browsers cannot set headers on a WebSocket, so the
    token may also come as subprotocol `bearer.<jwt>` or query parameter `token`."""
    chosen = "mesh.v1" if "mesh.v1" in subprotocols else None
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip(), chosen
    for p in subprotocols:
        if p.startswith("bearer."):
            return p[len("bearer.") :], chosen
    tok = args.get("token")
    return (tok or None), chosen

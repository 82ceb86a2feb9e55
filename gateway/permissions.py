"""Roles -> subject grants, and named channels: from a TOML file, not code.

Client text never becomes a subject directly: a request is first reduced to the five
subject fields, each validated by `mesh.subjects` (wildcards, `~`, whitespace and control
characters refused, dots escaped), then checked field by field against the grants, and
only then turned into a pattern by `subjects.pattern`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from gateway.auth import Principal
from gateway.errors import RequestError
from mesh import subjects
from mesh.catalog import Catalog, Priority
from mesh.errors import ConfigError, InvalidToken, UnknownEventType

ACCOUNT_VAR = "$account"
FIELDS = ("priority", "domain", "event_type", "symbol", "account")


class Grant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    priority: str | None = None
    domain: str | None = None
    event_type: str | None = None
    symbol: str | None = None
    account: str | None = None


class Role(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    grants: list[Grant] = msgspec.field(default_factory=list)
    replay: bool = False


class Channel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    priority: str | None = None
    domain: str | None = None
    event_type: str | None = None
    symbol: str | None = None
    account: str | None = None
    params: list[str] = msgspec.field(default_factory=list)


class PermissionsFile(msgspec.Struct, forbid_unknown_fields=True):
    roles: dict[str, Role] = msgspec.field(default_factory=dict)
    channels: dict[str, Channel] = msgspec.field(default_factory=dict)


class Interest(msgspec.Struct, frozen=True):
    """Validated subject fields of one subscription (None = any)."""

    priority: str | None = None
    domain: str | None = None
    event_type: str | None = None
    symbol: str | None = None
    account: str | None = None

    def pattern(self) -> str:
        return subjects.pattern(
            priority=self.priority,
            domain=self.domain,
            event_type=self.event_type,
            symbol=self.symbol,
            account=self.account,
        )


def load(path: str | Path) -> PermissionsFile:
    try:
        return msgspec.convert(tomllib.loads(Path(path).read_text()), PermissionsFile)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"permissions file {path}: {e}") from e


class Permissions:
    def __init__(self, spec: PermissionsFile, catalog: Catalog) -> None:
        self.spec = spec
        self.catalog = catalog

    # -- requests -> interests -------------------------------------------------------------

    def from_fields(self, fields: dict[str, str | None]) -> Interest:
        """Validate each field; derive domain/priority from the event type (catalog)."""
        vals: dict[str, str | None] = {}
        for f in FIELDS:
            v = fields.get(f)
            if v is not None and not isinstance(v, str):
                raise RequestError("invalid", f"{f} must be a string")
            vals[f] = v
        try:
            if vals["priority"] is not None:
                vals["priority"] = Priority(vals["priority"]).value
            if vals["event_type"] is not None:
                spec = self.catalog.spec(vals["event_type"])
                for f, want in (("domain", spec.domain), ("priority", spec.priority.value)):
                    if vals[f] not in (None, want):
                        raise RequestError("invalid", f"{vals['event_type']} is {f} {want}")
                    vals[f] = want
            if vals["domain"] is not None and vals["domain"] not in self.catalog.domains:
                raise RequestError("invalid", f"unknown domain {vals['domain']!r}")
            interest = Interest(**vals)
            interest.pattern()  # validates symbol/account like a publisher's tokens
        except ValueError:
            raise RequestError("invalid", f"unknown priority {vals['priority']!r}") from None
        except UnknownEventType as e:
            raise RequestError("invalid", str(e)) from None
        except InvalidToken as e:
            raise RequestError("invalid", str(e)) from None
        return interest

    def from_subject(self, subject: str) -> Interest:
        """`tm.<priority>.<domain>.<type>.<symbol>.<account>` with `*` / trailing `>`."""
        if not isinstance(subject, str) or len(subject) > 512:
            raise RequestError("invalid", "subject must be a string of at most 512 characters")
        tokens = subject.split(".")
        if tokens[0] != subjects.PREFIX:
            raise RequestError("invalid", "subject patterns start with 'tm.'")
        tokens = tokens[1:]
        if ">" in tokens[:-1]:
            raise RequestError("invalid", "'>' is only allowed as the last token")
        if tokens and tokens[-1] == ">":
            tokens = tokens[:-1] + ["*"] * (len(FIELDS) - len(tokens) + 1)
        if len(tokens) == len(FIELDS) + 1 and tokens[-1] == "*":
            tokens = tokens[:-1]  # the partition token: any
        if len(tokens) != len(FIELDS):
            raise RequestError("invalid", "subject: tm.<priority>.<domain>.<type>.<sym>.<acct>")
        fields: dict[str, str | None] = {}
        for f, t in zip(FIELDS, tokens, strict=True):
            if t == "*":
                fields[f] = None
            elif f in ("symbol", "account"):
                # Tokens arrive escaped (BRK~2EB): unescape, then re-validate from scratch,
                # so an escaped wildcard (~2A, ~3E) is refused like a literal one.
                fields[f] = subjects.unescape_token(t)
            else:
                fields[f] = t
        return self.from_fields(fields)

    def from_channel(
        self, principal: Principal, name: str, params: dict[str, str | None]
    ) -> Interest:
        ch = self.spec.channels.get(name)
        if ch is None:
            raise RequestError("unknown_channel", f"no channel {name!r}; known: "
                               + ", ".join(sorted(self.spec.channels)))
        fields: dict[str, str | None] = {f: getattr(ch, f) for f in FIELDS}
        for f, v in params.items():
            if v is None:
                continue
            if f not in ch.params:
                raise RequestError("invalid", f"channel {name!r} takes {ch.params or 'nothing'}")
            fields[f] = v
        if fields["account"] == ACCOUNT_VAR:
            if len(principal.accounts) != 1:
                raise RequestError(
                    "invalid", f"channel {name!r}: name the account (yours: {principal.accounts})"
                )
            fields["account"] = principal.accounts[0]
        return self.from_fields(fields)

    # -- authorization ---------------------------------------------------------------------

    def allowed(self, principal: Principal, interest: Interest) -> bool:
        for role in principal.roles:
            spec = self.spec.roles.get(role)
            if spec is None:
                continue
            for g in spec.grants:
                if self._covers(g, interest, principal):
                    return True
        return False

    @staticmethod
    def _covers(g: Grant, i: Interest, principal: Principal) -> bool:
        for f in FIELDS:
            want = getattr(g, f)
            if want is None:
                continue
            have = getattr(i, f)
            if want == ACCOUNT_VAR:
                if have is None or have not in principal.accounts:
                    return False
            elif have != want:
                return False
        return True

    def may_replay(self, principal: Principal) -> bool:
        return any(
            (r := self.spec.roles.get(name)) is not None and r.replay for name in principal.roles
        )

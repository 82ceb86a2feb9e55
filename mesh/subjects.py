"""Subject scheme: tm.<priority>.<domain>.<event_type>.<symbol>.<account>.

User data (symbols, accounts) never reaches a subject unchecked: tokens are validated and
characters that NATS gives meaning to are escaped (`BRK.B` -> `BRK~2EB`), while wildcards,
whitespace and control characters are refused outright. `_` stands for "none".

The server appends one token, the partition (see nats-config/accounts.conf), so stored
subjects have seven tokens: tm.high.market.PRICE_UPDATE.AAPL._.3
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from mesh.catalog import Catalog, Priority
from mesh.errors import InvalidToken

PREFIX = "tm"
NONE = "_"
MAX_TOKEN = 64

_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_EVENT_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_DOMAIN = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Refused, not escaped: wildcards, our escape char, whitespace and anything non-printable.
_FORBIDDEN = re.compile(r"[*>~\s\x00-\x1f\x7f]")
_ESCAPED = re.compile(r"~([0-9A-F]{2})")


def escape_token(field: str, value: str | None) -> str:
    """A user-supplied symbol/account as one safe subject token."""
    if value is None:
        return NONE
    if not isinstance(value, str):
        raise InvalidToken(field, value, "must be a string")
    if value == "" or value == NONE:
        raise InvalidToken(field, value, "must not be empty (leave it unset for none)")
    if len(value) > MAX_TOKEN:
        raise InvalidToken(field, value, f"longer than {MAX_TOKEN} characters")
    if not value.isascii():
        raise InvalidToken(field, value, "only ASCII characters are allowed")
    bad = _FORBIDDEN.search(value)
    if bad:
        raise InvalidToken(
            field, value, f"character {bad.group()!r} is not allowed (wildcards, ~, whitespace)"
        )
    if _SAFE.fullmatch(value):
        return value
    return "".join(c if _SAFE.fullmatch(c) else f"~{ord(c):02X}" for c in value)


def unescape_token(token: str) -> str | None:
    if token == NONE:
        return None
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), token)


class SubjectParts(NamedTuple):
    priority: str
    domain: str
    event_type: str
    symbol: str | None
    account: str | None
    partition: int | None


@functools.lru_cache(maxsize=65536)
def route(
    catalog: Catalog, event_type: str, symbol: str | None, account: str | None
) -> tuple[str, Priority]:
    """Subject and priority of an event. Cached: symbols and accounts repeat, and this runs
    once per published event (refusals raise and are not cached)."""
    return event_subject(catalog, event_type, symbol, account), catalog.spec(event_type).priority


def event_subject(
    catalog: Catalog, event_type: str, symbol: str | None, account: str | None
) -> str:
    spec = catalog.spec(event_type)
    return ".".join(
        (
            PREFIX,
            spec.priority.value,
            spec.domain,
            event_type,
            escape_token("symbol", symbol),
            escape_token("account", account),
        )
    )


def parse(subject: str) -> SubjectParts:
    tokens = subject.split(".")
    if len(tokens) not in (6, 7) or tokens[0] != PREFIX:
        raise InvalidToken("subject", subject, "not a tm.<priority>.<domain>.<type>.<sym>.<acct>")
    partition = int(tokens[6]) if len(tokens) == 7 else None
    return SubjectParts(
        tokens[1],
        tokens[2],
        tokens[3],
        unescape_token(tokens[4]),
        unescape_token(tokens[5]),
        partition,
    )


def pattern(
    *,
    priority: Priority | str | None = None,
    domain: str | None = None,
    event_type: str | None = None,
    symbol: str | None = None,
    account: str | None = None,
    partition: int | None = None,
) -> str:
    """A subscription filter; unset fields are wildcards. Values are validated like events'."""
    prio = Priority(priority).value if priority is not None else "*"
    if domain is not None and not _DOMAIN.fullmatch(domain):
        raise InvalidToken("domain", domain, "lower-case letters, digits and _")
    if event_type is not None and not _EVENT_TYPE.fullmatch(event_type):
        raise InvalidToken("event_type", event_type, "upper-case letters, digits and _")
    if partition is not None and (not isinstance(partition, int) or partition < 0):
        raise InvalidToken("partition", partition, "a non-negative integer")
    return ".".join(
        (
            PREFIX,
            prio,
            domain or "*",
            event_type or "*",
            "*" if symbol is None else escape_token("symbol", symbol),
            "*" if account is None else escape_token("account", account),
            "*" if partition is None else str(partition),
        )
    )


def priorities_of(filter_subject: str) -> list[Priority]:
    """Which priority streams a filter can match (the second token decides)."""
    tokens = filter_subject.split(".")
    if tokens[0] not in (PREFIX, "*", ">"):
        return []
    if len(tokens) == 1 or tokens[1] in ("*", ">") or tokens[0] == ">":
        return list(Priority)
    try:
        return [Priority(tokens[1])]
    except ValueError:
        return []

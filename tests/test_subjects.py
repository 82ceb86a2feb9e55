from __future__ import annotations

import pytest

from mesh import subjects
from mesh.catalog import BUILTIN, Priority
from mesh.errors import InvalidToken, UnknownEventType


def test_event_subject_follows_the_scheme() -> None:
    assert (
        subjects.event_subject(BUILTIN, "PRICE_UPDATE", "AAPL", None)
        == "tm.high.market.PRICE_UPDATE.AAPL._"
    )
    assert (
        subjects.event_subject(BUILTIN, "MARGIN_CALL", None, "ACC42")
        == "tm.critical.risk.MARGIN_CALL._.ACC42"
    )


@pytest.mark.parametrize(
    ("raw", "token"),
    [("BRK.B", "BRK~2EB"), ("EUR/USD", "EUR~2FUSD"), ("^GSPC", "~5EGSPC"), ("ES-Z6", "ES-Z6")],
)
def test_symbols_with_special_characters_are_escaped_and_round_trip(raw: str, token: str) -> None:
    assert subjects.escape_token("symbol", raw) == token
    assert subjects.unescape_token(token) == raw
    subject = subjects.event_subject(BUILTIN, "PRICE_UPDATE", raw, None)
    assert len(subject.split(".")) == 6
    assert subjects.parse(subject).symbol == raw


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "_",
        "*",
        ">",
        "AAPL.>",
        "A B",
        "A\tB",
        "A\nB",
        "tm.critical.>",
        "x~2E",
        "ÄPFEL",
        "A" * 65,
        "A\x00",
    ],
)
def test_hostile_tokens_are_refused(hostile: str) -> None:
    with pytest.raises(InvalidToken):
        subjects.event_subject(BUILTIN, "PRICE_UPDATE", hostile, None)
    with pytest.raises(InvalidToken):
        subjects.event_subject(BUILTIN, "ORDER_PLACED", "AAPL", hostile)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownEventType, match="NOT_A_TYPE"):
        subjects.event_subject(BUILTIN, "NOT_A_TYPE", "AAPL", None)


def test_parse_reads_the_partition_token() -> None:
    parts = subjects.parse("tm.high.market.PRICE_UPDATE.BRK~2EB._.5")
    assert parts == subjects.SubjectParts("high", "market", "PRICE_UPDATE", "BRK.B", None, 5)


def test_pattern_wildcards_unset_fields_and_escapes_set_ones() -> None:
    assert subjects.pattern(symbol="BRK.B") == "tm.*.*.*.BRK~2EB.*.*"
    assert subjects.pattern(priority=Priority.CRITICAL, partition=3) == "tm.critical.*.*.*.*.3"
    with pytest.raises(InvalidToken):
        subjects.pattern(symbol=">")
    with pytest.raises(InvalidToken):
        subjects.pattern(event_type="PRICE.>")


def test_priorities_of_a_filter() -> None:
    assert subjects.priorities_of("tm.>") == list(Priority)
    assert subjects.priorities_of("tm.critical.>") == [Priority.CRITICAL]
    assert subjects.priorities_of("tm.*.market.>") == list(Priority)
    assert subjects.priorities_of("other.>") == []

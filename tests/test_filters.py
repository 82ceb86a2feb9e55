"""Content filters: JSON and text forms, validation bounds, matching semantics, no eval."""

from __future__ import annotations

import ast
import builtins
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mesh import filters as flt
from mesh.catalog import Priority
from mesh.errors import FilterError, MeshError
from mesh.events import Event
from mesh.filters import And, Cmp, Filter, FilterSyntaxError, Not, Or, from_json, parse, to_text


def event(**payload: Any) -> Event:
    return Event(event_type="PRICE_UPDATE", symbol="AAPL", payload=payload)


def matches(text: str, ev: Event, headers: Mapping[str, str] | None = None) -> bool:
    return flt.compile(parse(text))(ev, headers)


def same(a: Filter, b: Filter) -> bool:
    # Struct == says 1 == 1.0 == True; repr also tells the types apart.
    return a == b and repr(a) == repr(b)


A1 = Cmp("payload.a", "==", 1)
B2 = Cmp("payload.b", "==", 2)
C3 = Cmp("payload.c", "==", 3)


# --- operators -------------------------------------------------------------------------

EV = event(price=100, side="buy", flag=True, ratio=0.5, qty=-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.price == 100", True),
        ("payload.price == 100.0", True),
        ("payload.price == 101", False),
        ("payload.price != 101", True),
        ("payload.price != 100", False),
        ("payload.price < 101", True),
        ("payload.price < 100", False),
        ("payload.price <= 100", True),
        ("payload.price <= 99.9", False),
        ("payload.price > 99", True),
        ("payload.price > 100", False),
        ("payload.price >= 100", True),
        ("payload.price >= 1e2", True),
        ("payload.price > 1e2", False),
        ("payload.qty > -5", True),
        ("payload.qty < -3", False),
        ("payload.ratio > 0.25", True),
        ("payload.side == buy", True),
        ('payload.side == "buy"', True),
        ("payload.side != sell", True),
        ("payload.side != buy", False),
        ("payload.side < c", True),
        ("payload.side >= c", False),
        ("payload.side prefix b", True),
        ('payload.side prefix "bu"', True),
        ("payload.side prefix x", False),
        ('payload.side prefix ""', True),
        ("payload.price in [99, 100]", True),
        ("payload.price in [1, 2]", False),
        ("payload.price in []", False),
        ("symbol in [AAPL, MSFT]", True),
        ('symbol in ["BRK.B", MSFT]', False),
        ("payload.flag == true", True),
        ("payload.flag != false", True),
        ("payload.flag == false", False),
        ("event_type prefix PRICE_", True),
        ("event_type prefix ORDER_", False),
        ("event_type == PRICE_UPDATE", True),
    ],
)
def test_each_operator(text: str, expected: bool) -> None:
    assert matches(text, EV) is expected


def test_in_keeps_kinds_apart() -> None:
    f = flt.compile(parse('payload.x in [1, "2", true, null]'))
    assert f(event(x=1), None)
    assert f(event(x=1.0), None)
    assert f(event(x="2"), None)
    assert f(event(x=True), None)
    assert f(event(), None)  # null in the list matches a missing field
    assert not f(event(x="1"), None)
    assert not f(event(x=2), None)
    assert not f(event(x=False), None)
    assert not f(event(x=[1]), None)


def test_in_list_is_copied_at_compile_time() -> None:
    values = ["AAPL"]
    pred = flt.compile(Cmp("symbol", "in", values))
    values.append("MSFT")
    msft = Event(event_type="PRICE_UPDATE", symbol="MSFT")
    assert not pred(msft, None)
    assert pred(event(), None)


# --- and / or / not, precedence -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.a == 1 and payload.b == 2", True),
        ("payload.a == 1 and payload.b == 3", False),
        ("payload.a == 9 or payload.b == 2", True),
        ("payload.a == 9 or payload.b == 9", False),
        ("not payload.a == 9", True),
        ("not not payload.a == 1", True),
        ("not (payload.a == 1 and payload.b == 2)", False),
        ("payload.a == 1 and (payload.b == 9 or not payload.c == 9)", True),
        ("(payload.a == 9 or payload.b == 2) and (payload.c == 3 or payload.c == 4)", True),
        ("payload.a == 9 or payload.b == 9 or payload.c == 3", True),
        ("payload.a == 1 and payload.b == 2 and payload.c == 9", False),
    ],
)
def test_boolean_combinations(text: str, expected: bool) -> None:
    assert matches(text, event(a=1, b=2, c=3)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.a == 1 or payload.b == 2 and payload.c == 3", Or([A1, And([B2, C3])])),
        ("payload.a == 1 and payload.b == 2 or payload.c == 3", Or([And([A1, B2]), C3])),
        ("not payload.a == 1 and payload.b == 2", And([Not(A1), B2])),
        ("not payload.a == 1 or payload.b == 2", Or([Not(A1), B2])),
        ("not (payload.a == 1 or payload.b == 2)", Not(Or([A1, B2]))),
        ("(payload.a == 1 or payload.b == 2) and payload.c == 3", And([Or([A1, B2]), C3])),
        ("payload.a == 1 and payload.b == 2 and payload.c == 3", And([A1, B2, C3])),
        ("payload.a == 1 and (payload.b == 2 and payload.c == 3)", And([A1, And([B2, C3])])),
        ("payload.a == 1 or payload.b == 2 or payload.c == 3", Or([A1, B2, C3])),
        ("((payload.a == 1))", A1),
        ("payload.a == 1 AND payload.b == 2 Or NOT payload.c == 3", Or([And([A1, B2]), Not(C3)])),
        (
            "symbol IN [A] and symbol Prefix A",
            And([Cmp("symbol", "in", ["A"]), Cmp("symbol", "prefix", "A")]),
        ),
    ],
)
def test_precedence_not_and_or(text: str, expected: Filter) -> None:
    assert same(parse(text), expected)


def test_precedence_changes_the_result() -> None:
    # a or (b and c): true because a is; (a or b) and c would be false.
    assert matches("payload.a == 1 or payload.b == 2 and payload.c == 3", event(a=1, b=0, c=0))
    assert not matches("(payload.a == 1 or payload.b == 2) and payload.c == 3", event(a=1))


# --- missing fields, null, type mismatches ---------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "payload.missing == 1",
        "payload.missing != 1",
        "payload.missing > 1",
        "payload.missing <= 1",
        "payload.missing == x",
        "payload.missing in [x, 1]",
        "payload.missing prefix x",
        "payload.none == 1",
        "payload.none != 1",
        "account == ACC1",
        "account != ACC1",
        "account prefix A",
        "tenant in [t1]",
        "header.X-Tenant == acme",
        "header.X-Tenant != acme",
    ],
)
def test_missing_or_null_field_never_matches_and_not_inverts(text: str) -> None:
    ev = event(none=None)
    assert not matches(text, ev)
    assert matches(f"not ({text})", ev)
    assert matches(f"not {text}", ev)


def test_null_is_a_presence_test() -> None:
    assert matches("payload.x == null", event())
    assert matches("payload.x == null", event(x=None))
    assert not matches("payload.x == null", event(x=0))
    assert matches("payload.x != null", event(x=0))
    assert matches("payload.x != null", event(x=False))
    assert not matches("payload.x != null", event())
    assert matches("account == null", event())
    assert matches("header.X == null", event(), None)
    assert matches("header.X != null", event(), {"X": ""})


@pytest.mark.parametrize(
    ("text", "payload"),
    [
        ("payload.price > 100", {"price": "abc"}),
        ("payload.price == 100", {"price": "100"}),
        ("payload.price != 100", {"price": "100"}),
        ("payload.price < z", {"price": 100}),
        ('payload.price == "100"', {"price": 100}),
        ('payload.price prefix "1"', {"price": 100}),
        # bool is not a number, in ordering nor in equality
        ("payload.flag == 1", {"flag": True}),
        ("payload.flag > 0", {"flag": True}),
        ("payload.flag >= 0", {"flag": False}),
        ("payload.flag in [1, 0]", {"flag": True}),
        ("payload.n == true", {"n": 1}),
        ("payload.n in [true]", {"n": 1}),
        # containers are not scalars
        ("payload.tags == 1", {"tags": [1]}),
        ("payload.tags in [1, 2]", {"tags": [1, 2]}),
        ("payload.tags > 0", {"tags": [1]}),
        ("payload.obj == x", {"obj": {"x": 1}}),
        ("payload.obj prefix x", {"obj": {"x": 1}}),
    ],
)
def test_type_mismatch_is_false_not_an_error(text: str, payload: dict[str, Any]) -> None:
    assert not matches(text, event(**payload))


def test_predicate_never_raises_on_odd_events() -> None:
    texts = [f"payload.x {op} {v}" for op in ("==", "!=", "<", ">=") for v in ("1", "a", "1.5")]
    texts += ["payload.x in [1, a, true, null]", "payload.x prefix a", "payload.x.y == 1"]
    odd = [None, 1, 1.5, float("nan"), "a", True, [1, 2], {"y": 1}, {"y": [1]}, 10**30]
    preds = [flt.compile(parse(t)) for t in texts]
    for value in odd:
        for pred in preds:
            pred(event(x=value), None)
    broken = Event(event_type="PRICE_UPDATE", payload="not a dict")  # type: ignore[arg-type]
    for pred in preds:
        assert pred(broken, {}) in (False, True)


# --- header fields, headers mapping, payload nesting -----------------------------------


def test_every_event_header_field_is_known() -> None:
    for name in Event.__struct_fields__:
        if name == "payload":
            with pytest.raises(FilterError, match=r"payload\.price"):
                parse("payload == null")
        else:
            assert parse(f"{name} == null") == Cmp(name, "==", None)


def test_header_fields() -> None:
    ev = Event(
        event_type="ORDER_PLACED",
        symbol="AAPL",
        account="ACC1",
        tenant="t1",
        priority=Priority.HIGH,
        source="trading",
        causation_id="c-1",
    )
    assert matches("account == ACC1 and tenant == t1 and source == trading", ev)
    assert matches("causation_id == c-1", ev)
    assert flt.compile(Cmp("event_id", "==", ev.event_id))(ev, None)
    assert flt.compile(Cmp("correlation_id", "==", ev.event_id))(ev, None)
    assert matches("timestamp > 0 and version == 1 and version < 2", ev)
    assert not matches("timestamp < 0", ev)


def test_priority_compares_as_its_string_value() -> None:
    high = Event(event_type="ORDER_PLACED", priority=Priority.HIGH)
    assert matches("priority == high", high)
    assert matches('priority == "high"', high)
    assert matches("priority in [critical, high]", high)
    assert matches("priority prefix hi", high)
    assert not matches("priority != high", high)
    assert not matches("priority in [critical, standard]", high)
    assert flt.compile(Cmp("priority", "in", [Priority.HIGH]))(high, None)
    assert flt.compile(Cmp("priority", "==", Priority.HIGH))(high, None)
    assert not matches("priority == high", Event(event_type="ORDER_PLACED"))


def test_nats_headers() -> None:
    headers = {"Nats-Msg-Id": "abc", "X-Tenant": "acme", "traceparent": "00-1"}
    ev = event()
    assert matches("header.Nats-Msg-Id == abc", ev, headers)
    assert matches("header.X-Tenant in [acme, beta]", ev, headers)
    assert matches('header.traceparent prefix "00-"', ev, headers)
    assert not matches("header.X-Tenant == beta", ev, headers)
    assert not matches("header.x-tenant == acme", ev, headers)  # names are exact
    assert not matches("header.Nats-Msg-Id == abc", ev, None)
    assert matches("not header.Nats-Msg-Id == abc", ev, None)


def test_payload_nesting() -> None:
    ev = event(order={"side": "buy", "limits": {"max": 10}, "tags": ["x"]}, flat="s")
    assert matches("payload.order.side == buy", ev)
    assert matches("payload.order.limits.max > 5", ev)
    assert not matches("payload.order.limits.min > 5", ev)
    assert not matches("payload.order.tags.x == 1", ev)
    assert not matches("payload.flat.side == buy", ev)  # a string has no keys
    assert not matches("payload.nope.side == buy", ev)
    assert matches("payload.order.limits != null", ev)
    assert matches('payload.a-b_c.0 == "ok"', event(**{"a-b_c": {"0": "ok"}}))


# --- no eval -----------------------------------------------------------------------------


def test_code_in_values_is_just_a_string() -> None:
    code = "__import__('os').system('x')"
    ev = event(cmd=code)
    assert matches("payload.cmd == \"__import__('os').system('x')\"", ev)
    assert not matches("payload.other == \"__import__('os').system('x')\"", ev)
    f = from_json({"field": "payload.cmd", "op": "==", "value": code})
    assert flt.compile(f)(ev, None)
    assert parse(to_text(f)) == f
    assert matches("payload.cmd prefix __import__", ev)


def test_dunder_fields_are_plain_keys() -> None:
    ev = event(price=1)
    assert not matches("payload.__class__ == dict", ev)
    assert not matches("payload.__class__ != null", ev)
    assert matches("not payload.__class__ == dict", ev)
    assert not matches("payload.price.__class__ == int", ev)
    assert not matches("header.__dict__ != null", ev, {})
    assert matches("payload.__class__ == x", event(__class__="x"))
    for field in ("__class__", "payload.__class__()", "payload.a[0]", "event_type.__class__"):
        with pytest.raises(FilterError, match="field"):
            from_json({"field": field, "op": "==", "value": 1})


def test_no_eval_exec_or_builtin_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("filters must not evaluate code")

    text = 'payload.price > 100 and (symbol in [AAPL, "BRK.B"] or not account == ACC1)'
    with monkeypatch.context() as m:
        for name in ("eval", "exec", "compile", "__import__"):
            m.setattr(builtins, name, forbidden)
        f = parse(text)
        g = from_json(flt.to_json(f))
        pred = flt.compile(g)
        result = pred(event(price=101), None), to_text(g)
    assert result == (True, text.replace('"BRK.B"', "BRK.B"))

    tree = ast.parse(Path(flt.__file__).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not ({"eval", "exec", "__import__", "builtins", "getattr"} & (names | attrs))
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "builtins" not in imports


# --- JSON form ---------------------------------------------------------------------------


def test_json_form_matches_text_form() -> None:
    obj = {
        "and": [
            {"field": "payload.price", "op": ">", "value": 100},
            {
                "or": [
                    {"field": "symbol", "op": "in", "value": ["AAPL", "BRK.B"]},
                    {"not": {"field": "account", "op": "==", "value": "ACC1"}},
                ]
            },
        ]
    }
    text = 'payload.price > 100 and (symbol in [AAPL, "BRK.B"] or not account == ACC1)'
    assert same(from_json(obj), parse(text))
    assert flt.to_json(parse(text)) == obj
    # The Structs encode to the client shape, and decode back through from_json.
    wire = msgspec.json.encode(parse(text))
    assert same(from_json(msgspec.json.decode(wire)), parse(text))


def test_json_one_element_and_or_is_the_element() -> None:
    cmp = {"field": "symbol", "op": "==", "value": "A"}
    assert same(from_json({"and": [cmp]}), Cmp("symbol", "==", "A"))
    assert same(from_json({"not": {"or": [{"and": [cmp]}]}}), Not(Cmp("symbol", "==", "A")))


def deep_not(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"field": "symbol", "op": "==", "value": "A"}
    for _ in range(levels):
        node = {"not": node}
    return node


def many(n: int) -> dict[str, Any]:
    return {"or": [{"field": "payload.i", "op": "==", "value": i} for i in range(n)]}


def test_json_limits_are_inclusive() -> None:
    from_json(deep_not(flt.MAX_DEPTH - 1))
    from_json(many(flt.MAX_NODES - 1))
    from_json({"field": "symbol", "op": "in", "value": ["A"] * flt.MAX_IN_ITEMS})
    from_json({"field": "symbol", "op": "==", "value": "A" * flt.MAX_STRING})


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (
            {"field": "payload.p", "op": "=>", "value": 1},
            r"\$\.op: unknown operator '=>'.*use one of",
        ),
        ({"field": "payload.p", "op": "=", "value": 1}, r"'==' compares for equality"),
        ({"field": "payload.p", "op": "between", "value": 1}, r"unknown operator"),
        (
            {"field": "price", "op": "==", "value": 1},
            r"\$\.field: unknown field 'price' \(did you mean payload\.price\?\)",
        ),
        ({"field": "payload", "op": "==", "value": 1}, r"name a key in it, e.g. payload\.price"),
        ({"field": "payload..x", "op": "==", "value": 1}, r"bad payload path"),
        ({"field": "payload.a b", "op": "==", "value": 1}, r"bad payload path"),
        ({"field": "header.", "op": "==", "value": "x"}, r"header\.<Name>"),
        ({"field": 5, "op": "==", "value": 1}, r"field must be a string"),
        ({"field": "payload." + "a" * 300, "op": "==", "value": 1}, r"limited to 256"),
        ({"field": "symbol", "op": "in", "value": "AAPL"}, r"\$\.value: 'in' needs a list"),
        ({"field": "symbol", "op": "in", "value": {"a": 1}}, r"'in' needs a list"),
        ({"field": "symbol", "op": "in", "value": ["A"] * 1001}, r"at most 1000 values"),
        (
            {"field": "symbol", "op": "in", "value": ["A", ["B"]]},
            r"\$\.value\[1\]: a value must be",
        ),
        ({"field": "symbol", "op": "prefix", "value": 5}, r"'prefix' needs a string"),
        ({"field": "timestamp", "op": "prefix", "value": "1"}, r"only tests strings"),
        ({"field": "symbol", "op": "==", "value": ["A"]}, r"a list is only allowed with 'in'"),
        ({"field": "symbol", "op": "==", "value": {"a": 1}}, r"got an object"),
        ({"field": "symbol", "op": "==", "value": "A" * 1025}, r"limited to 1024 characters"),
        ({"field": "payload.x", "op": "==", "value": float("nan")}, r"finite"),
        ({"field": "payload.x", "op": "==", "value": "a\ud800"}, r"valid Unicode"),
        ({"field": "payload.x", "op": "==", "value": 2**70}, r"64 bits"),
        ({"field": "payload.x", "op": ">", "value": True}, r"no order"),
        ({"field": "payload.x", "op": "<", "value": None}, r"nothing is ordered against null"),
        ({"field": "symbol", "op": "==", "value": 123}, r'write the value as a string, "123"'),
        ({"field": "version", "op": "==", "value": "1"}, r"compare with a number"),
        ({"field": "priority", "op": "==", "value": "urgent"}, r"use one of critical, high"),
        ({"field": "priority", "op": ">=", "value": "high"}, r"priority in \[critical, high\]"),
        ({"field": "header.X", "op": "==", "value": 5}, r"holds strings"),
        ({"field": "symbol", "op": "=="}, r"comparison without value"),
        ({"field": "symbol", "op": "==", "value": "A", "x": 1}, r"unknown key 'x' in a comparison"),
        ({"op": "==", "value": "A"}, r"comparison without field"),
        ({"andd": []}, r"unknown key 'andd'"),
        ({}, r"expected exactly one of"),
        ({"and": [], "or": []}, r"expected exactly one of"),
        ({"and": []}, r"\$\.and: needs a non-empty list"),
        ({"or": {"field": "symbol"}}, r"needs a non-empty list"),
        ({"not": [deep_not(0)]}, r"\$\.not: expected an object"),
        ({"and": [deep_not(0), 5]}, r"\$\.and\[1\]: expected an object"),
        ('{"field": "symbol"}', r"decode the JSON text first"),
        (None, r"expected an object"),
        (deep_not(flt.MAX_DEPTH), r"nested more than 16 levels"),
        (many(flt.MAX_NODES), r"more than 64 nodes"),
        (many(100_000), r"more than 64 nodes"),
        ({"and": [many(40), many(40)]}, r"\$\.and\[1\]\.or: more than 64 nodes"),
    ],
)
def test_json_validation_errors(obj: Any, fragment: str) -> None:
    with pytest.raises(FilterError, match=fragment):
        from_json(obj)


# --- text form ---------------------------------------------------------------------------


def test_text_values() -> None:
    f = parse(
        'payload.v in [1, -2, 3.5, -1e3, 2E-2, "a b", "q\\"\\\\\\n\\t\\u00e9\\ud83d\\ude00", '
        "true, FALSE, Null, BRK.B, ACC-1, _x]"
    )
    assert isinstance(f, Cmp)
    assert f.value == [1, -2, 3.5, -1000.0, 0.02, "a b", 'q"\\\n\té😀', True, False, None,
                       "BRK.B", "ACC-1", "_x"]  # fmt: skip
    assert [type(v) for v in f.value[:5]] == [int, int, float, float, float]


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "empty filter"),
        ("   ", 1, "empty filter"),
        ("payload.price >", 16, "expected a value"),
        ("payload.price > 100 and", 24, "expected a comparison"),
        ("price > 100", 1, r"did you mean payload\.price"),
        ("payload.price 100", 15, "expected an operator"),
        ("payload.price => 100", 15, r"unexpected character '='"),
        ("symbol = AAPL", 8, "'==' compares for equality"),
        ("symbol == 'AAPL'", 11, "double quotes"),
        ("symbol == AAPL && account == A", 16, "write 'and'"),
        ("symbol == AAPL || account == A", 16, "write 'or'"),
        ("(symbol == AAPL", 16, r"expected '\)' to close the '\(' at column 1"),
        ("symbol == AAPL)", 15, r"'\)' without a matching '\('"),
        ("symbol == AAPL account == B", 16, "expected 'and', 'or' or the end"),
        ("symbol in AAPL", 11, "'in' needs a list"),
        ("symbol in [AAPL MSFT]", 17, r"expected ',' or '\]' in the list opened at column 11"),
        ("symbol in [AAPL,", 17, "expected a value"),
        ("symbol in [A, [B]]", 15, "expected a value"),
        ("symbol == [A]", 11, "only allowed with 'in'"),
        ('symbol == "abc', 11, "unterminated string"),
        ('symbol == "abc\\', 11, "unterminated string"),
        ('symbol == "a\\qb"', 13, r"unknown escape '\\q'"),
        ('symbol == "\\u12"', 12, "four hex digits"),
        ("symbol == and", 11, "'and' is a keyword"),
        ("symbol == in", 11, "'in' is a keyword"),
        ("and == 1", 1, "expected a comparison"),
        ("not", 4, "expected a comparison"),
        ("symbol == 123", 11, 'write the value as a string, "123"'),
        ("payload.d == 2024-01-01", 14, r"is not a number: quote it.*\"2024-01-01\""),
        ("payload.d == 1e", 14, "is not a number"),
        ("payload.d == .5", 14, "is not a number"),
        ("payload.d == a+b", 14, "cannot be a bare word"),
        ("payload.d == 1e999", 14, "finite"),
        ('payload.d == "\\ud800"', 14, "valid Unicode"),
        ("payload.x > true", 13, "no order"),
        ("payload.x >= null", 14, "nothing is ordered against null"),
        ("version == 1 and timestamp prefix x", 18, "only tests strings"),
        ("event_type prefix 5", 19, "'prefix' needs a string"),
        ("priority < high", 10, "no useful order"),
        ("priority == urgent", 13, "unknown priority"),
        ("symbol in [A, 5, B]", 15, "holds strings"),
        ("header.X == 5", 13, "holds strings"),
        ("header.X.Y == a", 1, "bad header field"),
        ("payload. == a", 1, "bad payload path"),
        ("symbol == é", 11, "unexpected character 'é'"),
        ("symbol == A ; drop", 13, "unexpected character ';'"),
    ],
)
def test_text_parse_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(FilterSyntaxError, match=fragment) as info:
        parse(text)
    assert info.value.column == column
    assert info.value.text == text
    assert str(info.value).startswith(f"column {column}: ")
    assert isinstance(info.value, FilterError)
    assert isinstance(info.value, MeshError)


def test_text_limits() -> None:
    parse(" and ".join(f"payload.i == {i}" for i in range(flt.MAX_NODES - 1)))
    with pytest.raises(FilterSyntaxError, match="more than 64 nodes"):
        parse(" or ".join(f"payload.i == {i}" for i in range(flt.MAX_NODES)))
    parse("not " * (flt.MAX_DEPTH - 1) + "symbol == A")
    with pytest.raises(FilterSyntaxError, match="16 levels") as info:
        parse("not " * flt.MAX_DEPTH + "symbol == A")
    assert info.value.column == 1
    with pytest.raises(FilterSyntaxError, match="at most 1000 values"):
        parse("symbol in [" + ", ".join(["A"] * 1001) + "]")
    with pytest.raises(FilterSyntaxError, match="1024 characters"):
        parse(f'symbol == "{"A" * 1025}"')
    parse(f'symbol == "{"A" * 1024}"')
    with pytest.raises(FilterSyntaxError, match="number longer"):
        parse("payload.x == " + "9" * 5000)


def test_hostile_text_is_refused_without_recursion_errors() -> None:
    for text in (
        "(" * 30_000 + "symbol == A" + ")" * 30_000,
        "not " * 15_000 + "symbol == A",
        " or ".join(["symbol == A"] * 4_000),
        "symbol in [" + "A," * 30_000 + "A]",
        "payload.a == 1 and (" * 20 + "payload.a == 1" + ")" * 20,
    ):
        with pytest.raises(FilterSyntaxError):
            parse(text)
    with pytest.raises(FilterError, match="limited to"):
        parse("symbol == A " + " " * flt.MAX_TEXT)
    with pytest.raises(FilterError, match="must be a string"):
        parse(b"symbol == A")  # type: ignore[arg-type]


# --- to_text round trip ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'payload.price > 100 and (symbol in [AAPL, "BRK.B"] or not account == ACC1)',
        "event_type prefix ORDER_",
        'payload.side == "buy"',
        "payload.a == 1 or payload.b == 2 and payload.c == 3",
        "(payload.a == 1 or payload.b == 2) and payload.c == 3",
        "payload.a == 1 and (payload.b == 2 and payload.c == 3)",
        "payload.a == 1 or (payload.b == 2 or payload.c == 3)",
        "not (payload.a == 1 and payload.b == 2)",
        "not not payload.a == 1",
        "not (not (payload.a == 1))",
        'payload.x in [1, -2.5, true, null, x, "y z"]',
        "payload.x == 1e300 and payload.y == -0.0 and payload.z == 0.1",
        "header.Nats-Msg-Id == abc and priority in [critical, high] and version >= 2",
        'payload.s == "and" or payload.s == "True" or payload.s == "100" or payload.s == ""',
    ],
)
def test_text_round_trip(text: str) -> None:
    f = parse(text)
    again = parse(to_text(f))
    assert same(again, f)
    assert to_text(again) == to_text(f)


def test_to_text_is_readable() -> None:
    assert to_text(parse('symbol  in ["AAPL" ,MSFT]AND  NOT(account==A)')) == (
        "symbol in [AAPL, MSFT] and not account == A"
    )
    assert to_text(parse("(payload.a == 1 or payload.b == 2) or payload.c == 3")) == (
        "(payload.a == 1 or payload.b == 2) or payload.c == 3"
    )
    assert to_text(And([A1])) == to_text(A1)


TRICKY_STRINGS = [
    "",
    " ",
    'say "hi"',
    "back\\slash",
    "new\nline\ttab\rcr",
    "\x00\x01\x1f\x7f",
    "é ü 日本 😀",
    "and",
    "NOT",
    "True",
    "null",
    "in",
    "prefix",
    "100",
    "-5",
    "1e5",
    "2024-01-01",
    "BRK.B",
    "ACC-1",
    "a+b",
    "[x]",
    "__import__('os').system('x')",
]


@pytest.mark.parametrize("value", TRICKY_STRINGS)
def test_round_trip_of_tricky_strings(value: str) -> None:
    f = Or([Cmp("payload.s", "==", value), Cmp("payload.s", "in", [value, "x"])])
    assert same(parse(to_text(f)), f)
    assert same(from_json(flt.to_json(f)), f)
    assert flt.compile(parse(to_text(f)))(event(s=value), None)


def random_filter(rng: random.Random, depth: int) -> Filter:
    if depth <= 1 or rng.random() < 0.35:
        return random_cmp(rng)
    kind = rng.choice(["and", "or", "not"])
    if kind == "not":
        return Not(random_filter(rng, depth - 1))
    children = [random_filter(rng, depth - 1) for _ in range(rng.randint(2, 3))]
    return And(children) if kind == "and" else Or(children)


def random_scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            rng.randint(-(2**63), 2**64 - 1),
            rng.randint(-5, 5),
            rng.uniform(-1e6, 1e6),
            rng.choice([0.1, -0.0, 1e-300, 1e300]),
            rng.choice(TRICKY_STRINGS),
            "".join(rng.choice('aZ_.-9 "\\\n') for _ in range(rng.randint(0, 8))),
        ]
    )


def random_cmp(rng: random.Random) -> Cmp:
    field = rng.choice(["payload.x", "payload.a.b-c", "payload.__class__"])
    op = rng.choice(flt.OPS)
    if op == "in":
        return Cmp(field, op, [random_scalar(rng) for _ in range(rng.randint(0, 4))])
    value = random_scalar(rng)
    if op == "prefix":
        value = str(value)
    elif op in ("<", "<=", ">", ">=") and (value is None or isinstance(value, bool)):
        value = 0
    return Cmp(field, op, value)


def test_round_trip_of_generated_filters() -> None:
    rng = random.Random(20240601)
    events = [event(x=v, a={"b-c": v}) for v in (None, 0, 1, -0.0, "a", True, "", [1])]
    for _ in range(400):
        f = random_filter(rng, 5)
        text = to_text(f)
        assert same(parse(text), f), text
        assert same(from_json(flt.to_json(f)), f)
        assert same(from_json(msgspec.json.decode(msgspec.json.encode(f))), f)
        pred, again = flt.compile(f), flt.compile(parse(text))
        for ev in events:
            assert pred(ev, None) is again(ev, None)


# --- hand-built Structs are validated too ------------------------------------------------


@pytest.mark.parametrize(
    ("f", "fragment"),
    [
        (Cmp("nope", "==", 1), r"\$\.field: unknown field"),
        (Cmp("symbol", "~", "A"), r"\$\.op: unknown operator"),  # type: ignore[arg-type]
        (Cmp("symbol", "in", ("A",)), r"'in' needs a list"),
        (And([]), r"\$\.and: needs a non-empty list"),
        (Or("abc"), r"\$\.or: needs a non-empty list"),  # type: ignore[arg-type]
        (Not(5), r"\$\.not: expected Cmp, And, Or or Not"),  # type: ignore[arg-type]
        (And([A1, Or([B2, Cmp("payload.c", ">", None)])]), r"\$\.and\[1\]\.or\[1\]\.value"),
        (Or([A1] * 64), "more than 64 nodes"),
    ],
)
def test_compile_and_to_text_validate_structs(f: Any, fragment: str) -> None:
    with pytest.raises(FilterError, match=fragment):
        flt.compile(f)
    with pytest.raises(FilterError, match=fragment):
        to_text(f)
    with pytest.raises(FilterError, match=fragment):
        flt.to_json(f)


def test_cyclic_struct_is_refused() -> None:
    children: list[Filter] = [A1]
    loop = And(children)
    children.append(loop)
    with pytest.raises(FilterError, match=r"16 levels|64 nodes"):
        flt.compile(loop)


def test_one_element_and_or_compile_to_the_element() -> None:
    ev = event(a=1)
    assert flt.compile(And([A1]))(ev, None)
    assert not flt.compile(Or([Not(A1)]))(ev, None)

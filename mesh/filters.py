"""Content filters: which events a subscriber wants, decided by header and payload fields.

Why it is built this way:

* Declarative. A filter is data, not code: `Cmp`, `And`, `Or`, `Not` Structs. WebSocket
  clients send it as JSON (`from_json`), the CLI writes it as text (`parse`); both end up as
  the same Structs, which can be validated, compared, stored (`to_json`) and shown back to a
  person (`to_text`).
* Compiled once. A subscription calls `compile` once; every event then runs a tree of small
  closures in which field paths are already getters and `in` lists already frozensets, so
  matching does no parsing and no name resolution on the hot path.
* No eval. Nothing here builds or runs Python source: neither `eval`, `exec` nor the builtin
  `compile()` is used (this module's `compile` only composes closures). A value such as
  `__import__('os')` is a string that gets compared; a field such as `payload.__class__` is a
  dict key that gets looked up, and is missing.
* Bounded. Filters come from untrusted clients, so input is measured before it is walked:
  at most MAX_NODES nodes and MAX_DEPTH levels, MAX_IN_ITEMS values per `in` list,
  MAX_STRING characters per string, MAX_TEXT characters of text form. Every refusal is a
  FilterError that says what is wrong and how to write it instead.

Matching rules, chosen so a sloppy filter can only cost its own subscriber events, never
raise inside the dispatcher:

* A comparison needs a value of the comparand's kind: strings with strings, numbers with
  numbers, true/false with true/false (bool is not a number: true is not 1). A missing field,
  a null, or a value of another kind makes the comparison False -- for `!=` too -- so
  `not payload.x == 1` is how to say "anything but 1, including absent".
* `== null` and `!= null` are the presence tests (missing counts as null); `null` inside an
  `in` list likewise matches a missing field.
* `priority` compares as its string value ("high"); `header.<Name>` reads the NATS message
  headers with the exact name given, and header values are strings.
* What can never match is refused up front rather than silently delivering nothing: a
  number for a string header field (`account == 12345`), an unknown priority, ordering on
  priority names, true/false or null.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple, TypeAlias, get_args

import msgspec

from mesh.catalog import Priority
from mesh.errors import FilterError
from mesh.events import Event

__all__ = [
    "MAX_DEPTH",
    "MAX_FIELD",
    "MAX_IN_ITEMS",
    "MAX_NODES",
    "MAX_STRING",
    "MAX_TEXT",
    "OPS",
    "And",
    "Cmp",
    "Filter",
    "FilterSyntaxError",
    "Headers",
    "Not",
    "Op",
    "Or",
    "Predicate",
    "compile",
    "from_json",
    "parse",
    "to_json",
    "to_text",
]

MAX_NODES: Final = 64
MAX_DEPTH: Final = 16
MAX_IN_ITEMS: Final = 1000
MAX_STRING: Final = 1024
MAX_FIELD: Final = 256
MAX_TEXT: Final = 64 * 1024

Op: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">=", "in", "prefix"]
OPS: Final[tuple[Op, ...]] = get_args(Op)
_OP_BY_NAME: Final[dict[str, Op]] = {op: op for op in OPS}
_ORDERING: Final = frozenset({"<", "<=", ">", ">="})


class Cmp(msgspec.Struct, frozen=True):
    """`field op value`, e.g. Cmp("payload.price", ">", 100)."""

    field: str
    op: Op
    value: Any


# The wire names are the client JSON keys, so msgspec.to_builtins(f) is the JSON form.
class And(msgspec.Struct, frozen=True):
    all: list[Filter] = msgspec.field(name="and")


class Or(msgspec.Struct, frozen=True):
    any: list[Filter] = msgspec.field(name="or")


class Not(msgspec.Struct, frozen=True):
    filter: Filter = msgspec.field(name="not")


Filter: TypeAlias = Cmp | And | Or | Not
Headers: TypeAlias = Mapping[str, str] | None
Predicate: TypeAlias = Callable[[Event, Headers], bool]
_Getter: TypeAlias = Callable[[Event, Headers], object]


class FilterSyntaxError(FilterError):
    """The text form could not be read. `column` is 1-based, counted in characters."""

    def __init__(self, reason: str, text: str, column: int) -> None:
        super().__init__(f"column {column}: {reason}")
        self.reason = reason
        self.text = text
        self.column = column


# ---------------------------------------------------------------------------------------
# Fields and values: one set of rules for JSON, text and hand-built Structs.

# Header fields and what they hold. Knowing the kind lets us refuse comparisons that could
# never match (`account == 12345` compares a string with a number) instead of silently
# delivering nothing.
_HEADER_KINDS: Final[Mapping[str, str]] = {
    "event_type": "str",
    "symbol": "str",
    "account": "str",
    "tenant": "str",
    "event_id": "str",
    "correlation_id": "str",
    "causation_id": "str",
    "priority": "priority",
    "timestamp": "int",
    "source": "str",
    "version": "int",
}
_PRIORITIES: Final = tuple(p.value for p in Priority)
# Keys are restricted to what the text form can write bare, so every filter has a text form.
_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_OP_HINTS: Final[Mapping[str, str]] = {
    "=": " ('==' compares for equality)",
    "<>": " ('!=' means not equal)",
    "not in": " (write not (field in [...]))",
    "startswith": " ('prefix' tests the start of a string)",
}


class _Bad(Exception):
    """Internal: what is wrong with one comparison; callers add where (path or column)."""

    def __init__(self, part: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.part = part
        self.index = index

    @property
    def where(self) -> str:
        return f".{self.part}" if self.index is None else f".{self.part}[{self.index}]"


def _show(value: object) -> str:
    # User input goes into messages; keep a hostile 1 MB string from becoming the message.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_name(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


def _field_kind(field: object) -> str:
    if not isinstance(field, str):
        raise _Bad("field", f'field must be a string such as "payload.price", got {_show(field)}')
    if len(field) > MAX_FIELD:
        raise _Bad("field", f"field names are limited to {MAX_FIELD} characters")
    kind = _HEADER_KINDS.get(field)
    if kind is not None:
        return kind
    if field == "payload":
        raise _Bad("field", "'payload' is the whole payload: name a key in it, e.g. payload.price")
    if field.startswith("payload."):
        if all(_KEY.fullmatch(key) for key in field[8:].split(".")):
            return "any"
        raise _Bad(
            "field",
            f"bad payload path {_show(field)}: write payload.<key>[.<key>...] where each key is "
            "letters, digits, '_' or '-', e.g. payload.order.side",
        )
    if field.startswith("header."):
        if _KEY.fullmatch(field[7:]):
            return "header"
        raise _Bad(
            "field",
            f"bad header field {_show(field)}: write header.<Name> with a name of letters, "
            "digits, '_' or '-', e.g. header.Nats-Msg-Id",
        )
    hint = f" (did you mean payload.{field}?)" if _KEY.fullmatch(field) else ""
    raise _Bad(
        "field",
        f"unknown field {_show(field)}{hint}: use one of {', '.join(_HEADER_KINDS)}, "
        "payload.<key>[.<key>...] or header.<Name>",
    )


def _scalar_problem(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if _INT_MIN <= value <= _INT_MAX else "integers must fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite (no NaN or Infinity)"
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"strings are limited to {MAX_STRING} characters, this one has {len(value)}"
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                # A lone surrogate would make the filter impossible to send or store as JSON.
                return "strings must be valid Unicode (no lone surrogate such as \\ud800)"
        return None
    return f"a value must be a string, number, true, false or null, got {_kind_name(value)}"


def _type_problem(field: str, kind: str, value: object) -> str | None:
    if value is None or kind == "any":
        return None
    if kind == "int":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return None
        return f"{field} holds integers, so {_show(value)} never matches: compare with a number"
    if not isinstance(value, str):
        return (
            f"{field} holds strings, so {_show(value)} never matches: "
            f"write the value as a string, {_quote(_value_text(value))}"
        )
    if kind == "priority" and value not in _PRIORITIES:
        return f"unknown priority {_show(value)}: use one of {', '.join(_PRIORITIES)}"
    return None


def _check_cmp(field: object, op: object, value: object) -> Op:
    kind = _field_kind(field)
    assert isinstance(field, str)
    if not isinstance(op, str) or op not in _OP_BY_NAME:
        hint = _OP_HINTS.get(op.lower(), "") if isinstance(op, str) else ""
        raise _Bad("op", f"unknown operator {_show(op)}{hint}: use one of {', '.join(OPS)}")
    checked = _OP_BY_NAME[op]
    if op == "in":
        if not isinstance(value, list):
            raise _Bad(
                "value",
                f'\'in\' needs a list of values, e.g. ["AAPL", "MSFT"], got {_kind_name(value)}',
            )
        if len(value) > MAX_IN_ITEMS:
            raise _Bad(
                "value",
                f"an 'in' list holds at most {MAX_IN_ITEMS} values, this one has {len(value)}: "
                "split the subscription",
            )
        for i, item in enumerate(value):
            problem = _scalar_problem(item) or _type_problem(field, kind, item)
            if problem:
                raise _Bad("value", problem, i)
        return checked
    if isinstance(value, list | tuple):
        raise _Bad("value", f"a list is only allowed with 'in', e.g. {field} in [a, b]")
    problem = _scalar_problem(value)
    if problem:
        raise _Bad("value", problem)
    if op == "prefix":
        if not isinstance(value, str):
            raise _Bad(
                "value", f"'prefix' needs a string such as \"ORDER_\", got {_kind_name(value)}"
            )
        if kind == "int":
            raise _Bad("field", f"{field} holds integers; 'prefix' only tests strings")
        return checked
    if op in _ORDERING:
        if value is None:
            raise _Bad(
                "value",
                f"nothing is ordered against null: test presence with {field} != null",
            )
        if isinstance(value, bool):
            raise _Bad("value", "true and false have no order: use == or !=")
        if kind == "priority":
            raise _Bad(
                "op", "priority names have no useful order: list them, priority in [critical, high]"
            )
    problem = _type_problem(field, kind, value)
    if problem:
        raise _Bad("value", problem)
    return checked


def _too_many(where: str) -> FilterError:
    return FilterError(
        f"{where}: more than {MAX_NODES} nodes in the filter: merge equality tests into "
        "'in' lists or split the subscription"
    )


def _too_deep(where: str) -> FilterError:
    return FilterError(
        f"{where}: nested more than {MAX_DEPTH} levels deep: flatten it "
        "(a and (b and c) is a and b and c)"
    )


class _Budget:
    """Counts the nodes of untrusted input as it is walked and stops it at the limits."""

    def __init__(self) -> None:
        self.nodes = 0

    def visit(self, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _too_many(path)
        if depth > MAX_DEPTH:
            raise _too_deep(path)


def _check_tree(f: object) -> None:
    """Validates a Filter however it was made (Structs are not checked on construction)."""
    budget = _Budget()

    def walk(node: object, path: str, depth: int) -> None:
        budget.visit(path, depth)
        if isinstance(node, Cmp):
            try:
                _check_cmp(node.field, node.op, node.value)
            except _Bad as e:
                raise FilterError(f"{path}{e.where}: {e}") from None
        elif isinstance(node, And | Or):
            key, children = ("and", node.all) if isinstance(node, And) else ("or", node.any)
            if not isinstance(children, list) or not children:
                raise FilterError(f"{path}.{key}: needs a non-empty list of filters")
            if len(children) > MAX_NODES - budget.nodes:
                raise _too_many(f"{path}.{key}")
            for i, child in enumerate(children):
                walk(child, f"{path}.{key}[{i}]", depth + 1)
        elif isinstance(node, Not):
            walk(node.filter, f"{path}.not", depth + 1)
        else:
            raise FilterError(f"{path}: expected Cmp, And, Or or Not, got {_kind_name(node)}")

    walk(f, "$", 1)


# ---------------------------------------------------------------------------------------
# JSON form


_CMP_KEYS: Final = ("field", "op", "value")
_EXAMPLE: Final = '{"field": "payload.price", "op": ">", "value": 100}'


def from_json(obj: Any) -> Filter:
    """The Filter for a decoded JSON value; FilterError (with a `$.and[0].op` path) if invalid.

    A one-element "and"/"or" is its element, so every result round-trips through to_text.
    """
    budget = _Budget()

    def build(node: object, path: str, depth: int) -> Filter:
        budget.visit(path, depth)
        if not isinstance(node, dict):
            hint = " (decode the JSON text first)" if isinstance(node, str | bytes) else ""
            raise FilterError(
                f'{path}: expected an object such as {_EXAMPLE}, {{"and": [...]}}, '
                f'{{"or": [...]}} or {{"not": {{...}}}}, got {_kind_name(node)}{hint}'
            )
        if any(key in node for key in _CMP_KEYS):
            unknown = [key for key in node if key not in _CMP_KEYS]
            if unknown:
                raise FilterError(
                    f"{path}: unknown key {_show(unknown[0])} in a comparison: "
                    f"it has exactly field, op and value, e.g. {_EXAMPLE}"
                )
            missing = [key for key in _CMP_KEYS if key not in node]
            if missing:
                raise FilterError(
                    f"{path}: comparison without {', '.join(missing)}: "
                    f"it has exactly field, op and value, e.g. {_EXAMPLE}"
                )
            field, op, value = node["field"], node["op"], node["value"]
            try:
                checked = _check_cmp(field, op, value)
            except _Bad as e:
                raise FilterError(f"{path}{e.where}: {e}") from None
            return Cmp(field, checked, list(value) if isinstance(value, list) else value)
        if len(node) != 1:
            keys = ", ".join(_show(k) for k in list(node)[:5]) or "none"
            raise FilterError(
                f"{path}: expected exactly one of 'and', 'or', 'not', or a comparison "
                f"{_EXAMPLE}; got keys {keys}"
            )
        ((key, value),) = node.items()
        if key in ("and", "or"):
            where = f"{path}.{key}"
            if not isinstance(value, list) or not value:
                raise FilterError(
                    f"{where}: needs a non-empty list of filters, "
                    f'e.g. {{"{key}": [{_EXAMPLE}, ...]}}'
                )
            if len(value) > MAX_NODES - budget.nodes:
                raise _too_many(where)
            children = [build(child, f"{where}[{i}]", depth + 1) for i, child in enumerate(value)]
            if len(children) == 1:
                return children[0]
            return And(children) if key == "and" else Or(children)
        if key == "not":
            return Not(build(value, f"{path}.not", depth + 1))
        raise FilterError(
            f"{path}: unknown key {_show(key)}: use 'and', 'or', 'not', or field/op/value"
        )

    return build(obj, "$", 1)


def to_json(f: Filter) -> dict[str, Any]:
    """The JSON form clients send; from_json(to_json(f)) == f."""
    _check_tree(f)
    out: dict[str, Any] = msgspec.to_builtins(f)
    return out


# ---------------------------------------------------------------------------------------
# Text form


_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "prefix"})
_LITERALS: Final[Mapping[str, object]] = {"true": True, "false": False, "null": None}
_RESERVED: Final = _KEYWORDS | _LITERALS.keys()
# A run is read whole, then classified: `2024-01-01` must not silently become 2024 and a
# leftover `-01-01`.
_RUN: Final = re.compile(r"[A-Za-z0-9_.+-]+")
_NUMBER: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Bare words start with a letter so anything that looks numeric is a number or an error,
# never a string that quietly fails to match a number field.
_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PLAIN: Final = re.compile(r'[^"\\]+')
_HEX4: Final = re.compile(r"[0-9A-Fa-f]{4}")
_ESCAPES: Final[Mapping[str, str]] = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_CHAR_HINTS: Final[Mapping[str, str]] = {
    "=": ": '==' compares for equality",
    "!": ": write '!=' or 'not'",
    "&": ": write 'and'",
    "|": ": write 'or'",
    "'": ': strings use double quotes, "like this"',
}
_MAX_NUMBER_TEXT: Final = 64


class _Token(NamedTuple):
    kind: str  # word num str op ( ) [ ] , end
    text: str
    value: object
    pos: int


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "the end of the filter"
    return f"'{tok.text}'" if len(tok.text) <= 40 else f"'{tok.text[:37]}...'"


def _read_string(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    size = 0
    i = start + 1
    n = len(text)
    while i < n:
        m = _PLAIN.match(text, i)
        if m:
            out.append(m.group())
            size += m.end() - i
            i = m.end()
        elif text[i] == '"':
            break
        else:
            esc = text[i + 1 : i + 2]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                i += 2
            elif esc == "u" and _HEX4.fullmatch(text, i + 2, i + 6):
                code = int(text[i + 2 : i + 6], 16)
                i += 6
                low = text[i + 2 : i + 6]
                if (
                    0xD800 <= code < 0xDC00
                    and text.startswith("\\u", i)
                    and _HEX4.fullmatch(low)
                    and 0xDC00 <= int(low, 16) < 0xE000
                ):
                    code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                    i += 6
                out.append(chr(code))
            elif esc == "u":
                raise FilterSyntaxError("\\u needs four hex digits, e.g. \\u00e9", text, i + 1)
            elif esc:
                raise FilterSyntaxError(
                    f"unknown escape '\\{esc}': use \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX",
                    text,
                    i + 1,
                )
            else:
                break  # a backslash as the last character: unterminated
            size += 1
        if size > MAX_STRING:
            raise FilterSyntaxError(
                f"strings are limited to {MAX_STRING} characters", text, start + 1
            )
    if i >= n or text[i] != '"':
        raise FilterSyntaxError('unterminated string: close it with "', text, start + 1)
    return "".join(out), i + 1


def _classify(text: str, run: str, pos: int) -> _Token:
    if _NUMBER.fullmatch(run):
        if len(run) > _MAX_NUMBER_TEXT:
            raise FilterSyntaxError(
                f"number longer than {_MAX_NUMBER_TEXT} characters", text, pos + 1
            )
        number: int | float = float(run) if any(c in run for c in ".eE") else int(run)
        return _Token("num", run, number, pos)
    if _WORD.fullmatch(run):
        return _Token("word", run, run, pos)
    if run[0].isdigit() or run[0] in "+-.":
        problem = f"{_show(run)} is not a number"
    else:
        problem = f"{_show(run)} cannot be a bare word (letters, digits, '_', '.', '-')"
    raise FilterSyntaxError(
        f"{problem}: quote it to use it as a string, {_quote(run)}", text, pos + 1
    )


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c in "()[],":
            tokens.append(_Token(c, c, None, i))
            i += 1
        elif text.startswith(("==", "!=", "<=", ">="), i):
            tokens.append(_Token("op", text[i : i + 2], None, i))
            i += 2
        elif c in "<>":
            tokens.append(_Token("op", c, None, i))
            i += 1
        elif c == '"':
            value, end = _read_string(text, i)
            tokens.append(_Token("str", text[i:end], value, i))
            i = end
        elif m := _RUN.match(text, i):
            tokens.append(_classify(text, m.group(), i))
            i = m.end()
        else:
            hint = _CHAR_HINTS.get(c, "")
            raise FilterSyntaxError(f"unexpected character {c!r}{hint}", text, i + 1)
    tokens.append(_Token("end", "", None, n))
    return tokens


class _Parser:
    """Recursive descent: or_expr := and_expr (OR and_expr)*, and_expr := unary (AND unary)*,
    unary := NOT unary | '(' or_expr ')' | field op value. Each method returns the subtree
    and its height, so depth is refused where it happens, with a column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.nodes = 0
        self.nest = 0

    def error(self, pos: int, reason: str) -> FilterSyntaxError:
        return FilterSyntaxError(reason, self.text, pos + 1)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def at_keyword(self, keyword: str) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == "word" and tok.text.lower() == keyword

    def node(self, f: Filter, height: int, at: _Token) -> tuple[Filter, int]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(
                at.pos,
                f"more than {MAX_NODES} nodes in the filter: merge equality tests into "
                "'in' lists or split the subscription",
            )
        if height > MAX_DEPTH:
            raise self.error(
                at.pos,
                f"nested more than {MAX_DEPTH} levels deep: flatten it "
                "(a and (b and c) is a and b and c)",
            )
        return f, height

    def enter(self, at: _Token) -> None:
        # Redundant parentheses add no nodes but do add Python stack; bound them too.
        self.nest += 1
        if self.nest > 2 * MAX_DEPTH:
            raise self.error(at.pos, f"nested more than {MAX_DEPTH} levels deep")

    def parse(self) -> Filter:
        if self.peek().kind == "end":
            raise self.error(0, "empty filter: write a comparison such as payload.price > 100")
        f, _ = self.or_expr()
        tok = self.peek()
        if tok.kind == ")":
            raise self.error(tok.pos, "')' without a matching '('")
        if tok.kind != "end":
            raise self.error(
                tok.pos, f"expected 'and', 'or' or the end of the filter, got {_describe(tok)}"
            )
        return f

    def or_expr(self) -> tuple[Filter, int]:
        return self.chain("or", self.and_expr, Or)

    def and_expr(self) -> tuple[Filter, int]:
        return self.chain("and", self.unary, And)

    def chain(
        self,
        keyword: str,
        operand: Callable[[], tuple[Filter, int]],
        node: Callable[[list[Filter]], Filter],
    ) -> tuple[Filter, int]:
        """operand (keyword operand)*: one node for the whole run, so `a or b or c` is flat."""
        start = self.peek()
        f, height = operand()
        if not self.at_keyword(keyword):
            return f, height
        children = [f]
        while self.at_keyword(keyword):
            self.take()
            g, h = operand()
            children.append(g)
            height = max(height, h)
        return self.node(node(children), height + 1, start)

    def unary(self) -> tuple[Filter, int]:
        tok = self.peek()
        if self.at_keyword("not"):
            self.take()
            self.enter(tok)
            f, height = self.unary()
            self.nest -= 1
            return self.node(Not(f), height + 1, tok)
        if tok.kind == "(":
            self.take()
            self.enter(tok)
            result = self.or_expr()
            close = self.peek()
            if close.kind != ")":
                raise self.error(
                    close.pos,
                    f"expected ')' to close the '(' at column {tok.pos + 1}, "
                    f"got {_describe(close)}",
                )
            self.take()
            self.nest -= 1
            return result
        return self.comparison()

    def comparison(self) -> tuple[Filter, int]:
        ftok = self.take()
        if ftok.kind != "word" or ftok.text.lower() in _RESERVED:
            raise self.error(
                ftok.pos,
                "expected a comparison such as payload.price > 100 (a field: payload.<key>, "
                f"a header field like symbol, or header.<Name>), got {_describe(ftok)}",
            )
        try:
            _field_kind(ftok.text)
        except _Bad as e:
            raise self.error(ftok.pos, str(e)) from None
        otok = self.take()
        if otok.kind == "op":
            op = otok.text
        elif otok.kind == "word" and otok.text.lower() in ("in", "prefix"):
            op = otok.text.lower()
        else:
            raise self.error(
                otok.pos,
                f"expected an operator after {ftok.text} ({' '.join(OPS)}), got {_describe(otok)}",
            )
        vtok = self.peek()
        columns: list[int] = []
        value = self.list_value(columns) if vtok.kind == "[" else self.scalar()
        try:
            checked = _check_cmp(ftok.text, op, value)
        except _Bad as e:
            if e.part == "field":
                pos = ftok.pos
            elif e.part == "op":
                pos = otok.pos
            else:
                pos = vtok.pos if e.index is None else columns[e.index]
            raise self.error(pos, str(e)) from None
        return self.node(Cmp(ftok.text, checked, value), 1, ftok)

    def scalar(self) -> object:
        tok = self.take()
        if tok.kind in ("num", "str"):
            return tok.value
        if tok.kind == "word":
            low = tok.text.lower()
            if low in _LITERALS:
                return _LITERALS[low]
            if low in _KEYWORDS:
                raise self.error(
                    tok.pos,
                    f"'{tok.text}' is a keyword, not a value: quote it to mean the string, "
                    f'"{tok.text}"',
                )
            return tok.text
        raise self.error(
            tok.pos,
            'expected a value (a number, a "string", true, false, null or a bare word), '
            f"got {_describe(tok)}",
        )

    def list_value(self, columns: list[int]) -> list[object]:
        opening = self.take()
        items: list[object] = []
        if self.peek().kind == "]":
            self.take()
            return items
        while True:
            if len(items) >= MAX_IN_ITEMS:
                raise self.error(self.peek().pos, f"a list holds at most {MAX_IN_ITEMS} values")
            columns.append(self.peek().pos)
            items.append(self.scalar())
            tok = self.take()
            if tok.kind == "]":
                return items
            if tok.kind != ",":
                raise self.error(
                    tok.pos,
                    f"expected ',' or ']' in the list opened at column {opening.pos + 1}, "
                    f"got {_describe(tok)}",
                )


def parse(text: str) -> Filter:
    """The Filter for the CLI text form, e.g. `payload.price > 100 and symbol in [AAPL, MSFT]`.

    Raises FilterSyntaxError (a FilterError) naming the column and what was expected.
    """
    if not isinstance(text, str):
        raise FilterError(f"a filter text must be a string, got {_kind_name(text)}")
    if len(text) > MAX_TEXT:
        raise FilterError(f"filter text is limited to {MAX_TEXT} characters, got {len(text)}")
    f = _Parser(text).parse()
    _check_tree(f)
    return f


def _quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(item) for item in value) + "]"
    text = str.__str__(value) if isinstance(value, str) else str(value)
    if _WORD.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return _quote(text)


def _unwrap(f: Filter) -> Filter:
    # A one-element and/or means its element; the text form has no way to write it otherwise.
    while isinstance(f, And | Or):
        children = f.all if isinstance(f, And) else f.any
        if len(children) != 1:
            break
        f = children[0]
    return f


def _text(f: Filter) -> str:
    f = _unwrap(f)
    if isinstance(f, Cmp):
        return f"{f.field} {f.op} {_value_text(f.value)}"
    if isinstance(f, Not):
        inner = _unwrap(f.filter)
        return f"not ({_text(inner)})" if isinstance(inner, And | Or) else f"not {_text(inner)}"
    if isinstance(f, And):
        # Parentheses keep a nested And a nested And, so parse(to_text(f)) == f exactly.
        return " and ".join(_grouped(c, wrap_and=True) for c in f.all)
    return " or ".join(_grouped(c, wrap_and=False) for c in f.any)


def _grouped(f: Filter, *, wrap_and: bool) -> str:
    inner = _unwrap(f)
    if isinstance(inner, Or) or (wrap_and and isinstance(inner, And)):
        return f"({_text(inner)})"
    return _text(inner)


def to_text(f: Filter) -> str:
    """The text form of a filter; parse(to_text(f)) == f for anything parse/from_json return."""
    _check_tree(f)
    return _text(f)


# ---------------------------------------------------------------------------------------
# Compilation


_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _getter(field: str) -> _Getter:
    if field == "priority":

        def get_priority(ev: Event, headers: Headers) -> object:
            p = ev.priority
            return None if p is None else str(p)

        return get_priority
    if field in _HEADER_KINDS:
        attr = operator.attrgetter(field)

        def get_attr(ev: Event, headers: Headers) -> object:
            return attr(ev)

        return get_attr
    if field.startswith("header."):
        name = field[7:]

        def get_header(ev: Event, headers: Headers) -> object:
            return None if headers is None else headers.get(name)

        return get_header
    keys = tuple(field[8:].split("."))
    if len(keys) == 1:
        key = keys[0]

        def get_key(ev: Event, headers: Headers) -> object:
            payload = ev.payload
            return payload.get(key) if isinstance(payload, dict) else None

        return get_key

    def get_path(ev: Event, headers: Headers) -> object:
        node: object = ev.payload
        for k in keys:
            if not isinstance(node, dict):
                return None
            node = node.get(k)
        return node

    return get_path


def _plain(value: object) -> object:
    # Enum members and other subclasses behave like their base in comparisons and hashing
    # only mostly; plain values behave exactly.
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    return value


def _compile_in(get: _Getter, values: list[Any]) -> Predicate:
    plain = [_plain(v) for v in values]
    has_null = None in plain
    strs = frozenset(v for v in plain if isinstance(v, str))
    # Separate sets: in one set True and 1 (and 1.0) would be the same member.
    bools = frozenset(v for v in plain if isinstance(v, bool))
    nums = frozenset(v for v in plain if isinstance(v, int | float) and not isinstance(v, bool))
    if not (has_null or bools or nums):

        def in_strings(ev: Event, headers: Headers) -> bool:
            x = get(ev, headers)
            return isinstance(x, str) and x in strs

        return in_strings

    def in_values(ev: Event, headers: Headers) -> bool:
        x = get(ev, headers)
        if x is None:
            return has_null
        if isinstance(x, bool):
            return x in bools
        if isinstance(x, str):
            return x in strs
        if isinstance(x, int | float):
            return x in nums
        return False

    return in_values


def _compile_cmp(c: Cmp) -> Predicate:
    get = _getter(c.field)
    if c.op == "in":
        return _compile_in(get, c.value)
    value = _plain(c.value)
    if c.op == "prefix":
        assert isinstance(value, str)
        start = value

        def starts_with(ev: Event, headers: Headers) -> bool:
            x = get(ev, headers)
            return isinstance(x, str) and x.startswith(start)

        return starts_with
    if value is None:
        if c.op == "==":

            def absent(ev: Event, headers: Headers) -> bool:
                return get(ev, headers) is None

            return absent

        def present(ev: Event, headers: Headers) -> bool:
            return get(ev, headers) is not None

        return present
    test = _COMPARE[c.op]
    if isinstance(value, bool):

        def compare_bool(ev: Event, headers: Headers) -> bool:
            x = get(ev, headers)
            return isinstance(x, bool) and test(x, value)

        return compare_bool
    if isinstance(value, str):

        def compare_str(ev: Event, headers: Headers) -> bool:
            x = get(ev, headers)
            return isinstance(x, str) and test(x, value)

        return compare_str

    def compare_number(ev: Event, headers: Headers) -> bool:
        x = get(ev, headers)
        return isinstance(x, int | float) and not isinstance(x, bool) and test(x, value)

    return compare_number


def _build(f: Filter) -> Predicate:
    if isinstance(f, Cmp):
        return _compile_cmp(f)
    if isinstance(f, Not):
        inner = _build(f.filter)

        def negate(ev: Event, headers: Headers) -> bool:
            return not inner(ev, headers)

        return negate
    if isinstance(f, And):
        preds = tuple(_build(c) for c in f.all)
        if len(preds) == 1:
            return preds[0]

        def every(ev: Event, headers: Headers) -> bool:
            # A plain loop, not all(<genexpr>): no generator per event on the hot path.
            for p in preds:  # noqa: SIM110
                if not p(ev, headers):
                    return False
            return True

        return every
    alternatives = tuple(_build(c) for c in f.any)
    if len(alternatives) == 1:
        return alternatives[0]

    def some(ev: Event, headers: Headers) -> bool:
        for p in alternatives:  # noqa: SIM110 (see every())
            if p(ev, headers):
                return True
        return False

    return some


def compile(f: Filter) -> Predicate:
    """A predicate `(event, nats_headers_or_None) -> bool`, validated and built once.

    Raises FilterError for an invalid Filter (e.g. hand-built Structs); the predicate itself
    never raises for any event.
    """
    _check_tree(f)
    return _build(f)

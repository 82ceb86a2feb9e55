from __future__ import annotations

import pytest

from mesh.events import Event
from mesh.transforms import Projection, TransformError, Transforms


def test_upcasting_walks_the_chain_and_leaves_unknown_versions_alone() -> None:
    t = Transforms()
    t.register("PNL_CHANGE", 1, lambda p: {**p, "currency": "USD"})
    t.register("PNL_CHANGE", 2, lambda p: {"amount": p["pnl"], "currency": p["currency"]})
    e = Event(event_type="PNL_CHANGE", payload={"pnl": 5})
    up = t.upcast(e)
    assert (up.version, up.payload) == (3, {"amount": 5, "currency": "USD"})
    assert e.payload == {"pnl": 5}  # the original is not modified
    newer = Event(event_type="PNL_CHANGE", payload={"x": 1}, version=7)
    assert t.upcast(newer) is newer
    assert t.latest("PNL_CHANGE") == 3


def test_a_failing_upcaster_names_the_event() -> None:
    t = Transforms()
    t.register("PNL_CHANGE", 1, lambda p: {"amount": p["missing"]})
    e = Event(event_type="PNL_CHANGE", payload={})
    with pytest.raises(TransformError, match=e.event_id):
        t.upcast(e)


def test_registering_twice_is_refused() -> None:
    t = Transforms()
    t.register("PNL_CHANGE", 1, dict)
    with pytest.raises(ValueError, match="already"):
        t.register("PNL_CHANGE", 1, dict)


def test_projection_keeps_listed_fields_including_nested() -> None:
    e = Event(event_type="ORDER_BOOK_CHANGE", payload={"book": {"bid": 1, "ask": 2}, "x": 3})
    assert Projection(["book.bid", "missing", "x"]).apply(e).payload == {"book": {"bid": 1}, "x": 3}
    with pytest.raises(ValueError, match="field names"):
        Projection(["a..b"])

"""The fast canonical-JSON path gives exactly the walking checker's bytes, and refuses what it refuses.

``canonical_json`` (orjson as a strict-integer validator, then the stdlib C encoder) and
``canonical_json_checked`` (walk, then the same encoder) must agree on every value: the same text, or
both raising ``NotCanonicalizable``. The strategies reach past the accepted domain on purpose: integers
around ±2**53, floats of every magnitude and NaN/inf, non-string keys, lone surrogates, tuples,
non-dict mappings, subclasses and foreign types.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from audit.canonical import MAX_SAFE_INTEGER, NotCanonicalizable, canonical_json, canonical_json_checked


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Tag(str):
    pass


class Frozen(Mapping[str, Any]):
    """A Mapping that is not a dict: only the checker converts it."""

    def __init__(self, items: dict[str, Any]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


edge_integers = st.sampled_from(
    [0, 1, -1, MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER - 1, 2**63, 2**64]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_integers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e-12, max_value=1e-3),  # the exponent forms Python writes as 1e-05
    st.floats(min_value=1e14, max_value=1e20),
    st.text(),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Zl", "Lo"])),  # surrogates
    st.sampled_from([Level.HIGH, Colour.RED, Tag("tag"), uuid.UUID(int=7), datetime(2025, 1, 1, tzinfo=UTC)]),
)
keys = st.one_of(st.text(), st.text(max_size=3).map(Tag), st.integers(-3, 3), st.booleans(), st.none())


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
        st.dictionaries(keys, children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3).map(Frozen),
        st.dictionaries(st.text(max_size=8), children, max_size=3).map(MappingProxyType),
    )


values = st.recursive(scalars, _containers, max_leaves=30)


def _outcome(encode: Any, value: Any) -> tuple[str, str]:
    try:
        return ("text", encode(value))
    except NotCanonicalizable:
        return ("refused", "")


@settings(max_examples=1000, deadline=None)
@given(value=values)
@example(value={"score": 1.5e-05, "big": 1e16})  # orjson would write 0.000015 and 1e+16
@example(value={"n": MAX_SAFE_INTEGER + 1})
@example(value={"x": float("nan")})  # orjson would write null
@example(value={1: "a"})
@example(value={"s": "\ud800"})
@example(value={"id": uuid.UUID(int=7)})  # orjson would write the UUID as a string
def test_fast_path_equals_the_checker(value: Any) -> None:
    assert _outcome(canonical_json, value) == _outcome(canonical_json_checked, value)


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(scalars, _containers, max_leaves=30))
def test_accepted_text_is_sorted_compact_utf8_json_that_round_trips(value: Any) -> None:
    try:
        text = canonical_json(value)
    except NotCanonicalizable:
        return
    parsed = json.loads(text)
    assert json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == text
    text.encode("utf-8")  # no lone surrogate got through


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": {"b": [1, float("inf")]}}, "$.a.b[1]"),
        ({"n": -(2**53)}, "$.n"),
        ({"k": {3: 1}}, "$.k"),
        ({"s": ["ok", "\udc00"]}, "$.s[1]"),
        ({"t": Colour.RED}, "$.t"),
    ],
)
def test_refusals_name_where_the_value_sits(value: Any, where: str) -> None:
    with pytest.raises(NotCanonicalizable, match=f"^{re.escape(where)}:"):
        canonical_json(value)


def test_mappings_and_tuples_are_written_as_objects_and_arrays() -> None:
    assert canonical_json(Frozen({"b": (1, 2), "a": math.pi})) == '{"a":3.141592653589793,"b":[1,2]}'
    assert canonical_json({"é": "ü\u2028"}) == '{"é":"ü\u2028"}'

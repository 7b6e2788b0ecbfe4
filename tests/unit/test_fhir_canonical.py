"""Digests of canonical JSON: independent of key order, sensitive to any change of content."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from integrations.fhir.canonical import canonical_json, resource_sha256

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
resources = st.dictionaries(st.text(min_size=1, max_size=6), json_values, min_size=1, max_size=6)


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


@given(resources)
def test_key_order_does_not_change_the_digest(resource: dict[str, Any]) -> None:
    assert resource_sha256(_reversed_keys(resource)) == resource_sha256(resource)
    assert json.loads(canonical_json(resource)) == resource


@given(resources, st.text(min_size=1, max_size=6))
def test_any_added_element_changes_the_digest(resource: dict[str, Any], key: str) -> None:
    changed = {**resource, key: ["changed", resource.get(key)]}
    assert resource_sha256(changed) != resource_sha256(resource)


def test_known_vector() -> None:
    # printf '{"a":"é","b":[1,2]}' | sha256sum
    assert canonical_json({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'.encode()
    assert resource_sha256({"b": [1, 2], "a": "é"}) == (
        "9cfb1f938a87f2b8f3b8cc429c7a09116d54f048322742d4c23d4767b85f85da"
    )

"""Batch extension of the frontier equals the RFC 9162 tree: same subtree roots, every stored node right."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.compact_range import Frontier, extend_frontier
from audit.hashing import hash_leaf
from audit.reference_tree import mth
from audit.tree_layout import frontier

LEAVES = [hash_leaf(hashlib.sha256(str(i).encode()).digest()) for i in range(600)]


def _subtree(level: int, index: int) -> bytes:
    return mth(LEAVES[index << level : (index + 1) << level])


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    store_from=st.integers(1, 6),
)
def test_batches_give_the_reference_frontier_and_every_completed_node(
    batches: list[int], store_from: int
) -> None:
    size = 0
    current: Frontier = []
    rows: list[tuple[int, int, bytes]] = []
    for count in batches:
        current, new_rows = extend_frontier(current, size, LEAVES[size : size + count], store_from)
        rows.extend(new_rows)
        size += count
        assert current == [(level, _subtree(level, index)) for level, index in frontier(size)]
    expected = [
        (level, index, _subtree(level, index))
        for level in range(store_from, size.bit_length())
        for index in range(size >> level)
    ]
    assert sorted(rows) == sorted(expected)


def test_a_frontier_that_does_not_fit_the_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size 3"):
        extend_frontier([(1, LEAVES[0])], 3, [LEAVES[3]], 1)

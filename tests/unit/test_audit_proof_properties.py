"""Property tests: every proof for every (index, size) up to a few hundred verifies; any bit flip fails.

Proofs are built the way the ledger builds them (stored perfect-subtree nodes, ``tree_layout``) over an
in-memory copy of the nodes, and checked against the literal RFC 9162 definitions (``reference_tree``).

Bit flips are applied to the hashes (proof nodes, leaf, roots). Sizes are not flipped here on purpose:
an RFC 9162 proof does not bind the tree size by itself (the proof for leaf 0 of 5 also verifies as leaf
0 of 6 against the same root), which is why sizes are only trusted together with a signed root. The
published size/index mutations that must fail are in test_audit_rfc6962_vectors.py.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.hashing import fold_subtree_roots, hash_children, hash_leaf
from audit.proofs import ProofError, verify_consistency, verify_inclusion
from audit.reference_tree import mth, path, proof
from audit.tree_layout import consistency_ranges, frontier, inclusion_ranges, subtree_nodes

MAX_SIZE = 300
LEAVES = [hash_leaf(hashlib.sha256(str(i).encode()).digest()) for i in range(MAX_SIZE)]


def _build_levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append([hash_children(below[2 * k], below[2 * k + 1]) for k in range(len(below) // 2)])
    return levels


LEVELS = _build_levels(LEAVES)


def _hash(lo: int, hi: int) -> bytes:
    return fold_subtree_roots([LEVELS[level][index] for level, index in subtree_nodes(lo, hi)])


def _root(size: int) -> bytes:
    return fold_subtree_roots([LEVELS[level][index] for level, index in frontier(size)])


def _inclusion(index: int, size: int) -> list[bytes]:
    return [_hash(lo, hi) for lo, hi in inclusion_ranges(index, size)]


def _consistency(first: int, second: int) -> list[bytes]:
    return [_hash(lo, hi) for lo, hi in consistency_ranges(first, second)]


def test_every_inclusion_proof_up_to_max_size_verifies() -> None:
    roots = [b""] + [_root(size) for size in range(1, MAX_SIZE + 1)]
    for size in range(1, MAX_SIZE + 1):
        for index in range(size):
            verify_inclusion(index, size, LEAVES[index], _inclusion(index, size), roots[size])


def test_every_consistency_proof_up_to_max_size_verifies() -> None:
    roots = [b""] + [_root(size) for size in range(1, MAX_SIZE + 1)]
    for second in range(1, MAX_SIZE + 1):
        for first in range(1, second + 1):
            verify_consistency(first, second, _consistency(first, second), roots[first], roots[second])


sizes = st.integers(min_value=1, max_value=MAX_SIZE)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_stored_node_proofs_equal_the_rfc_definitions(data: st.DataObject) -> None:
    size = data.draw(sizes)
    index = data.draw(st.integers(0, size - 1))
    first = data.draw(st.integers(1, size))
    assert _root(size) == mth(LEAVES[:size])
    assert _inclusion(index, size) == path(index, LEAVES[:size])
    assert _consistency(first, size) == proof(first, LEAVES[:size])


def _flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_single_bit_flip_breaks_an_inclusion_proof(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, MAX_SIZE))
    index = data.draw(st.integers(0, size - 1))
    proof_, root, leaf = _inclusion(index, size), _root(size), LEAVES[index]
    target = data.draw(st.sampled_from(["proof", "leaf", "root"]))
    bit = data.draw(st.integers(0, 255))
    if target == "proof":
        position = data.draw(st.integers(0, len(proof_) - 1))
        proof_ = [*proof_[:position], _flip(proof_[position], bit), *proof_[position + 1 :]]
    elif target == "leaf":
        leaf = _flip(leaf, bit)
    else:
        root = _flip(root, bit)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof_, root)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_single_bit_flip_breaks_a_consistency_proof(data: st.DataObject) -> None:
    second = data.draw(st.integers(2, MAX_SIZE))
    first = data.draw(st.integers(1, second - 1))
    proof_, r1, r2 = _consistency(first, second), _root(first), _root(second)
    target = data.draw(st.sampled_from(["proof", "first_root", "second_root"]))
    bit = data.draw(st.integers(0, 255))
    if target == "proof":
        position = data.draw(st.integers(0, len(proof_) - 1))
        proof_ = [*proof_[:position], _flip(proof_[position], bit), *proof_[position + 1 :]]
    elif target == "first_root":
        r1 = _flip(r1, bit)
    else:
        r2 = _flip(r2, bit)
    with pytest.raises(ProofError):
        verify_consistency(first, second, proof_, r1, r2)


def test_every_bit_of_one_deep_proof_matters() -> None:
    size, index = 257, 200
    proof_, root = _inclusion(index, size), _root(size)
    for position, node in enumerate(proof_):
        for bit in range(256):
            broken = [*proof_[:position], _flip(node, bit), *proof_[position + 1 :]]
            with pytest.raises(ProofError):
                verify_inclusion(index, size, LEAVES[index], broken, root)

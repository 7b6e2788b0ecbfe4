"""Known-answer tests: RFC 6962/9162 hashing and proofs against published vectors.

The vectors (tests/testdata/audit/rfc6962_vectors.json) come from transparency-dev/merkle; the file
names the source files and commits. Each negative case is named after its mutation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.hashing import EMPTY_ROOT, hash_children, hash_leaf
from audit.proofs import ProofError, RootMismatch, verify_consistency, verify_inclusion
from audit.reference_tree import mth, path, proof
from audit.tree_layout import consistency_ranges, inclusion_ranges, subtree_nodes

VECTORS = json.loads((Path(__file__).parents[1] / "testdata/audit/rfc6962_vectors.json").read_text())
LEAVES = [hash_leaf(bytes.fromhex(h)) for h in VECTORS["leaves_hex"]]
ROOTS = {int(size): bytes.fromhex(root) for size, root in VECTORS["roots_by_size"].items()}
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


@pytest.mark.parametrize("case", VECTORS["hasher"], ids=lambda c: c["desc"])
def test_hasher_known_answers(case: dict[str, str]) -> None:
    if case["kind"] == "empty":
        got = EMPTY_ROOT
    elif case["kind"] == "leaf":
        got = hash_leaf(bytes.fromhex(case["input_hex"]))
    else:
        got = hash_children(bytes.fromhex(case["left_hex"]), bytes.fromhex(case["right_hex"]))
    assert got.hex() == case["want"]


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_the_published_tree(size: int) -> None:
    assert mth(LEAVES[:size]) == ROOTS[size]
    # The stored-node layout folds to the same root.
    assert _range_hash(0, size) == ROOTS[size]


def _range_hash(lo: int, hi: int) -> bytes:
    from audit.hashing import fold_subtree_roots

    return fold_subtree_roots([mth(LEAVES[i << lvl : (i + 1) << lvl]) for lvl, i in subtree_nodes(lo, hi)])


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_inclusion_vectors(case: dict) -> None:
    index, size = case["index"], case["size"]
    want = [bytes.fromhex(h) for h in case["path"]]
    assert path(index, LEAVES[:size]) == want
    assert [_range_hash(lo, hi) for lo, hi in inclusion_ranges(index, size)] == want
    verify_inclusion(index, size, LEAVES[index], want, ROOTS[size])


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['first']}-to-{c['second']}")
def test_consistency_vectors(case: dict) -> None:
    first, second = case["first"], case["second"]
    want = [bytes.fromhex(h) for h in case["path"]]
    assert proof(first, LEAVES[:second]) == want
    assert [_range_hash(lo, hi) for lo, hi in consistency_ranges(first, second)] == want
    verify_consistency(first, second, want, ROOTS[first], ROOTS[second])


def _inclusion_mutations(index: int, size: int, proof_: list[bytes], root: bytes, leaf: bytes) -> dict:
    cases = {
        "leafIndex-1": (index - 1, size, leaf, proof_, root),
        "leafIndex+1": (index + 1, size, leaf, proof_, root),
        "leafIndex^2": (index ^ 2, size, leaf, proof_, root),
        "treeSize*2": (index, size * 2, leaf, proof_, root),
        "treeSize/2": (index, size // 2, leaf, proof_, root),
        "wrong-leaf": (index, size, hash_leaf(b"WrongLeaf"), proof_, root),
        "empty-root": (index, size, leaf, proof_, EMPTY_ROOT),
        "random-root": (index, size, leaf, proof_, SOME_HASH),
        "trailing-garbage": (index, size, leaf, [*proof_, b""], root),
        "trailing-root": (index, size, leaf, [*proof_, root], root),
        "preceding-garbage": (index, size, leaf, [b"", *proof_], root),
        "preceding-root": (index, size, leaf, [root, *proof_], root),
    }
    for i in range(len(proof_)):
        flipped = [*proof_]
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        cases[f"modified-proof[{i}]-bit-3"] = (index, size, leaf, flipped, root)
    if proof_:
        cases["removed-component"] = (index, size, leaf, proof_[:-1], root)
    if len(proof_) > 1:
        cases["inserted-component"] = (index, size, leaf, [proof_[0], SOME_HASH, *proof_[1:]], root)
    return cases


@pytest.mark.parametrize("case", VECTORS["inclusion"][1:], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_inclusion_mutations_are_rejected(case: dict) -> None:
    index, size = case["index"], case["size"]
    proof_ = [bytes.fromhex(h) for h in case["path"]]
    for name, args in _inclusion_mutations(index, size, proof_, ROOTS[size], LEAVES[index]).items():
        if args[0] < 0:
            args = (args[0] + 2**64, *args[1:])  # Go's uint64 wrap: an index far beyond the size
        with pytest.raises(ProofError):
            verify_inclusion(*args)
            pytest.fail(f"mutation {name} verified")


@pytest.mark.parametrize("case", VECTORS["consistency"][1:], ids=lambda c: f"{c['first']}-to-{c['second']}")
def test_consistency_mutations_are_rejected(case: dict) -> None:
    first, second = case["first"], case["second"]
    p = [bytes.fromhex(h) for h in case["path"]]
    r1, r2 = ROOTS[first], ROOTS[second]
    cases = {
        "size1-1": (first - 1, second, p, r1, r2),
        "size1+1": (first + 1, second, p, r1, r2),
        "size1^2": (first ^ 2, second, p, r1, r2),
        "size2*2": (first, second * 2, p, r1, r2),
        "size2/2": (first, second // 2, p, r1, r2),
        "wrong-root1": (first, second, p, SOME_HASH, r2),
        "wrong-root2": (first, second, p, r1, SOME_HASH),
        "swapped-roots": (first, second, p, r2, r1),
        "empty-proof": (first, second, [], r1, r2),
        "trailing-garbage": (first, second, [*p, b""], r1, r2),
        "trailing-root1": (first, second, [*p, r1], r1, r2),
        "trailing-root2": (first, second, [*p, r2], r1, r2),
        "preceding-garbage": (first, second, [b"", *p], r1, r2),
        "preceding-root1": (first, second, [r1, *p], r1, r2),
        "preceding-root2": (first, second, [r2, *p], r1, r2),
        "preceding-proof[0]": (first, second, [p[0], *p], r1, r2),
        "truncated-proof": (first, second, p[:-1], r1, r2),
    }
    for i in range(len(p)):
        flipped = [*p]
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        cases[f"modified-proof[{i}]-bit-4"] = (first, second, flipped, r1, r2)
    for name, args in cases.items():
        with pytest.raises(ProofError):
            verify_consistency(*args)
            pytest.fail(f"mutation {name} verified")


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)], ids=["0-of-0", "0-of-1", "1-of-0", "2-of-1"]
)
def test_inclusion_rejects_impossible_probes(index: int, size: int) -> None:
    for leaf, root in ((SOME_HASH, b""), (b"", EMPTY_ROOT), (SOME_HASH, EMPTY_ROOT)):
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, [], root)


def test_single_leaf_tree_root_is_the_leaf() -> None:
    leaf = hash_leaf(b"data")
    verify_inclusion(0, 1, leaf, [], leaf)
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, leaf, [], b"")
    with pytest.raises(RootMismatch):
        verify_inclusion(0, 1, leaf, [], SOME_HASH)


@pytest.mark.parametrize(
    ("first", "second", "r1", "r2", "proof_"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),  # size 0 is rejected outright
        (0, 1, EMPTY_ROOT, SOME_HASH, []),
        (1, 0, SOME_HASH, SOME_HASH, []),  # first > second
        (2, 1, SOME_HASH, SOME_HASH, []),
        (1, 2, SOME_HASH, EMPTY_ROOT, []),  # empty proof for different sizes
        (1, 1, EMPTY_ROOT, SOME_HASH, []),  # equal sizes, different roots
        (1, 1, SOME_HASH, SOME_HASH, [SOME_HASH]),  # equal sizes, non-empty proof
        (1, 2, SOME_HASH[:31], EMPTY_ROOT, [SOME_HASH]),  # short root
    ],
)
def test_consistency_rejects_malformed_input(
    first: int, second: int, r1: bytes, r2: bytes, proof_: list
) -> None:
    with pytest.raises(ProofError):
        verify_consistency(first, second, proof_, r1, r2)


def test_equal_sizes_with_equal_roots_and_empty_proof_are_consistent() -> None:
    verify_consistency(3, 3, [], ROOTS[3], ROOTS[3])

"""Verifiers for RFC 9162 inclusion (§2.1.3.2) and consistency (§2.1.4.2) proofs.

Each verifier computes the root(s) the proof implies, then compares. A malformed proof (wrong hash
length, too few or too many nodes, impossible sizes) raises ``ProofError`` naming what was wrong; a
well-formed proof that leads to another root raises ``RootMismatch`` carrying both roots.
"""

from __future__ import annotations

from collections.abc import Sequence

from audit.hashing import HASH_SIZE, hash_children


class ProofError(ValueError):
    """A proof does not verify."""


class RootMismatch(ProofError):
    """A well-formed proof that leads to a different root than the one trusted."""

    def __init__(self, expected: bytes, calculated: bytes) -> None:
        super().__init__(f"calculated root {calculated.hex()} does not match expected root {expected.hex()}")
        self.expected = expected
        self.calculated = calculated


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, want {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf_hash`` at ``index``. Requires 0 <= index < size."""
    if size <= 0:
        raise ProofError(f"tree size {size}: nothing can be included in an empty tree")
    if not 0 <= index < size:
        raise ProofError(f"index {index} is beyond size {size}")
    _check_hash("leaf hash", leaf_hash)
    fn, sn, r = index, size - 1, leaf_hash
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
        if sn == 0:
            raise ProofError(f"proof has {len(proof)} nodes, more than a tree of size {size} needs")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"proof has {len(proof)} nodes, fewer than index {index} in size {size} needs")
    return r


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Requires 0 <= index < size.
    """
    _check_hash("root", root)
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if calculated != root:
        raise RootMismatch(expected=root, calculated=calculated)


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> None:
    """Check that the tree of ``second`` leaves with ``second_root`` extends the one of ``first``.

    Requires 0 < first <= second; when first == second the proof must be empty and the roots equal.
    """
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    if first <= 0:
        raise ProofError(f"first size {first}: consistency is only defined from a non-empty tree")
    if first > second:
        raise ProofError(f"first size {first} is beyond second size {second}")
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
    if first == second:
        if proof:
            raise ProofError(f"equal sizes need an empty proof, got {len(proof)} nodes")
        if first_root != second_root:
            raise RootMismatch(expected=first_root, calculated=second_root)
        return
    if not proof:
        raise ProofError(f"empty proof from size {first} to size {second}")
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: its root is the first node of the path
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"proof has {len(proof)} nodes, more than sizes {first}->{second} need")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"proof has {len(proof)} nodes, fewer than sizes {first}->{second} need")
    if fr != first_root:
        raise RootMismatch(expected=first_root, calculated=fr)
    if sr != second_root:
        raise RootMismatch(expected=second_root, calculated=sr)

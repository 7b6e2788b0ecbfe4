"""RFC 9162 §2.1.1 Merkle tree hashing with SHA-256 (the same as RFC 6962 §2.1)."""

from __future__ import annotations

import hashlib

HASH_SIZE = 32
LEAF_HASH_PREFIX = b"\x00"
NODE_HASH_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() — the root of the empty tree."""


def hash_leaf(entry: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return hashlib.sha256(LEAF_HASH_PREFIX + entry).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_HASH_PREFIX + left + right).digest()


def fold_subtree_roots(roots: list[bytes]) -> bytes:
    """Hash of a range given its perfect-subtree roots, largest (leftmost) first.

    RFC 9162 splits at the largest power of two below n, so the right-hand remainder is folded first.
    """
    if not roots:
        return EMPTY_ROOT
    acc = roots[-1]
    for left in reversed(roots[:-1]):
        acc = hash_children(left, acc)
    return acc

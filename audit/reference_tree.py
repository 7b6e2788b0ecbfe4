"""The RFC 9162 §2.1 definitions computed directly over a list of leaf hashes, kept in memory.

Slow (it re-hashes whole subtrees), and that is the point: the stored tree's proofs and the verifier
are checked against this literal reading of the RFC.
"""

from __future__ import annotations

from collections.abc import Sequence

from audit.hashing import EMPTY_ROOT, hash_children
from audit.tree_layout import largest_power_of_two_below


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = largest_power_of_two_below(n)
    return hash_children(mth(leaves[:k]), mth(leaves[k:]))


def path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]). Requires 0 <= index < len(leaves)."""
    n = len(leaves)
    if n <= 1:
        return []
    k = largest_power_of_two_below(n)
    if index < k:
        return [*path(index, leaves[:k]), mth(leaves[k:])]
    return [*path(index - k, leaves[k:]), mth(leaves[:k])]


def proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]). Requires 0 < first <= len(leaves)."""
    return _subproof(first, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), mth(leaves[:k])]

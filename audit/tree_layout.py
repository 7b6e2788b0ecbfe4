"""Index arithmetic for an RFC 9162 tree whose perfect subtrees are stored as nodes.

A node ``(level, index)`` is the root of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``. It is stored once its last leaf is appended and never
changes. Every subtree the RFC's recursion names, ``D[lo:hi]``, is a run of such nodes, so a proof is a
handful of stored nodes folded together: O(log n) reads, not the whole log.
"""

from __future__ import annotations

NodeId = tuple[int, int]
"""(level, index) of a perfect subtree root (level 0: a leaf)."""

STORED_MIN_LEVEL = 4
"""Lowest level written to ``audit_nodes``. Below it a node is recomputed from at most 2**(level)
leaf hashes, so the table holds ~n/8 rows instead of ~n (appends write less) and a proof reads at most
a few dozen extra leaf hashes. It may be raised later (lower stored levels are then ignored), never
lowered: proofs would look for nodes that were never written."""


def largest_power_of_two_below(n: int) -> int:
    """k such that k < n <= 2k (RFC 9162 §2.1.1). Requires n > 1."""
    if n < 2:
        raise ValueError(f"no split point for a tree of size {n}")
    return 1 << ((n - 1).bit_length() - 1)


def subtree_nodes(lo: int, hi: int) -> list[NodeId]:
    """Perfect subtrees covering ``D[lo:hi]``, left to right. Requires 0 <= lo < hi."""
    if not 0 <= lo < hi:
        raise ValueError(f"empty or negative range [{lo}, {hi})")
    nodes: list[NodeId] = []
    while lo < hi:
        # Largest aligned block starting at lo that fits in the range.
        level = (lo & -lo).bit_length() - 1 if lo else (hi - lo).bit_length() - 1
        while (1 << level) > hi - lo:
            level -= 1
        nodes.append((level, lo >> level))
        lo += 1 << level
    return nodes


def frontier(size: int) -> list[NodeId]:
    """Perfect subtrees whose fold is the root of the first ``size`` leaves, left to right."""
    return subtree_nodes(0, size) if size else []


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes make PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf side first.

    Requires 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not within a tree of size {size}")
    siblings: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = largest_power_of_two_below(hi - lo)
        if index < lo + k:
            siblings.append((lo + k, hi))
            hi = lo + k
        else:
            siblings.append((lo, lo + k))
            lo = lo + k
    siblings.reverse()
    return siblings


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose hashes make PROOF(first, D[second]) (RFC 9162 §2.1.4.1), in proof order.

    Requires 0 < first <= second.
    """
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    tail: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, second, first, True
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                tail.append((lo, hi))
            break
        k = largest_power_of_two_below(n)
        if m <= k:
            tail.append((lo + k, hi))
            hi = lo + k
        else:
            tail.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    tail.reverse()
    return tail

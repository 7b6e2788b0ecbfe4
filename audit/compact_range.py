"""Extending the compact range (the right edge of the tree) by a batch of leaves, level by level.

The frontier of a log of ``size`` leaves is its perfect-subtree roots, one per set bit of ``size``.
Appending a batch completes new perfect subtrees; they are computed one level at a time over the whole
batch (pairs of hashes in one comprehension), not leaf by leaf, because the leaf-by-leaf stack spent
more time in interpreter bookkeeping than in SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

Frontier = list[tuple[int, bytes]]
"""(level, hash) of each perfect-subtree root of the log, leftmost (highest level) first."""


def extend_frontier(
    frontier: Frontier, size: int, leaves: Sequence[bytes], store_from: int
) -> tuple[Frontier, list[tuple[int, int, bytes]]]:
    """Append ``leaves`` after the first ``size`` leaves whose frontier is ``frontier``.

    Returns the new frontier and every node completed at a level >= ``store_from`` as
    ``(level, node_index, hash)`` rows. Requires ``frontier`` to be the frontier of ``size`` leaves.
    """
    sha256 = hashlib.sha256
    old = dict(frontier)
    if len(old) != size.bit_count():
        raise ValueError(f"a frontier of {len(frontier)} subtrees cannot belong to a log of size {size}")
    kept: dict[int, bytes] = {}
    rows: list[tuple[int, int, bytes]] = []
    level, start, row = 0, size, list(leaves)
    while row:
        if start & 1:  # the first new node's left sibling is the old frontier's node at this level
            row.insert(0, old[level])
            start -= 1
        count = len(row)
        if count & 1:
            kept[level] = row[-1]
        parents = [sha256(b"\x01" + row[i] + row[i + 1]).digest() for i in range(0, count - 1, 2)]
        start >>= 1
        level += 1
        if level >= store_from:
            rows.extend(zip([level] * len(parents), range(start, start + len(parents)), parents, strict=True))
        row = parents
    for old_level, value in old.items():
        if old_level >= level:
            kept[old_level] = value
    return sorted(kept.items(), reverse=True), rows

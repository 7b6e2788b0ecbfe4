"""How an index row says its spool file was deleted by the retention purge.

The row is kept (the ledger and reports still reference the instance); its `spool_path` gets a prefix that
never resolves to a file, so readers can tell "purged" from "missing". It lives with the index, not the
spool, because ingest needs it too: a resend of purged bytes brings the file back and clears the mark.
"""

from __future__ import annotations

PURGED_PREFIX = "purged:"


def purged_marker(relative_path: str) -> str:
    """What a purged row's `spool_path` becomes: the old path stays visible and never resolves to a file."""
    return relative_path if is_purged(relative_path) else PURGED_PREFIX + relative_path


def is_purged(spool_path: str) -> bool:
    return spool_path.startswith(PURGED_PREFIX)

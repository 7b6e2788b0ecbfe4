"""SHA-256 of a FHIR resource's canonical JSON: what a cited resource version is pinned by.

Canonical here means sorted keys, no insignificant whitespace, UTF-8 without escaping, no NaN: the same
form as ``audit.canonical``, so a digest in an evidence item and one in the ledger agree. The resource
is hashed exactly as the server returned it, ``meta`` (versionId, lastUpdated) included.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(resource: dict[str, Any]) -> bytes:
    return json.dumps(
        resource, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def resource_sha256(resource: dict[str, Any]) -> str:
    """Lower-case hex SHA-256 of ``canonical_json(resource)``."""
    return hashlib.sha256(canonical_json(resource)).hexdigest()

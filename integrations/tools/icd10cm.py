"""ICD-10-CM knowledge tools from the ``simple-icd-10-cm`` data package (no network, no patient data).

A lookup result is evidence too (a code system entry, pinned by the package version and a digest of what
was returned), so a statement that names a code's meaning can cite where that meaning came from.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.metadata import version
from typing import Any

import simple_icd_10_cm as icd
from pydantic import Field

from model.report import EvidenceItem
from model.tools import PatientScope, PatientScopedArguments, Tool, ToolFailure, ToolResult
from model.verification import EvidenceFacts

SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
PACKAGE_VERSION = version("simple-icd-10-cm")
MAX_HITS = 25


class CodeArguments(PatientScopedArguments):
    code: str = Field(pattern=r"^[A-Za-z][0-9A-Za-z]{2}(\.?[0-9A-Za-z]{1,4})?$", description="e.g. E11.9")


class SearchArguments(PatientScopedArguments):
    query: str = Field(min_length=1, max_length=100, description="words that must all appear")
    limit: int = Field(default=10, ge=1, le=MAX_HITS)


@cache
def _all_codes() -> tuple[str, ...]:
    return tuple(icd.get_all_codes(with_dots=True))


def _entry(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "description": icd.get_description(code),
        "billable": icd.is_leaf(code),
        "ancestors": [
            {"code": a, "description": icd.get_description(a)}
            for a in icd.get_ancestors(code)
            if not icd.is_chapter(a)
        ],
        "excludes1": icd.get_excludes1(code),
    }


def _evidence(code: str, content: dict[str, Any]) -> tuple[EvidenceItem, EvidenceFacts]:
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    item = EvidenceItem(
        id=f"icd10cm:{code}",
        resource_type="CodeSystem",
        resource_id=f"icd-10-cm-{PACKAGE_VERSION}",
        version_id=PACKAGE_VERSION,
        sha256=digest,
        display=f"ICD-10-CM {code}: {content['description']}"[:400],
    )
    facts = EvidenceFacts(
        resource_type="CodeSystem", codes=[code, f"{SYSTEM}|{code}"], names=[content["description"]]
    )
    return item, facts


def lookup(scope: PatientScope, args: CodeArguments) -> ToolResult:
    """One code: its description, whether it is billable, its ancestors and excludes1 notes."""
    code = args.code.strip().upper()
    if not icd.is_valid_item(code):
        raise ToolFailure(f"{code!r} is not an ICD-10-CM code (release {PACKAGE_VERSION})")
    if icd.is_chapter_or_block(code):
        raise ToolFailure(f"{code!r} is a chapter or block, not a code")
    code = icd.add_dot(code)
    content = _entry(code)
    item, facts = _evidence(code, content)
    return ToolResult(content={"id": item.id, **content}, evidence=[item], facts={item.id: facts})


def search(scope: PatientScope, args: SearchArguments) -> ToolResult:
    """Codes whose description contains every word of ``query`` (case-insensitive), billable first."""
    words = args.query.lower().split()
    if not words:
        raise ToolFailure("query has no words")
    limit = args.limit
    hits = [
        c
        for c in _all_codes()
        if not icd.is_chapter_or_block(c) and all(w in icd.get_description(c).lower() for w in words)
    ]
    hits.sort(key=lambda c: (not icd.is_leaf(c), len(c), c))
    items, facts, listed = [], {}, []
    for code in hits[:limit]:
        content = {"code": code, "description": icd.get_description(code), "billable": icd.is_leaf(code)}
        item, item_facts = _evidence(code, content)
        items.append(item)
        facts[item.id] = item_facts
        listed.append({"id": item.id, **content})
    return ToolResult(content={"count": len(hits), "items": listed}, evidence=items, facts=facts)


def icd10cm_tools() -> list[Tool[Any]]:
    return [
        Tool(
            "icd10cm_lookup",
            "Look up one ICD-10-CM code (description, billable, ancestors).",
            CodeArguments,
            lookup,
        ),
        Tool(
            "icd10cm_search",
            "Find ICD-10-CM codes whose description contains all the words.",
            SearchArguments,
            search,
        ),
    ]

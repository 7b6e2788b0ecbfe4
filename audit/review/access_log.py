"""Every look at a patient's trace is itself a ledger entry: who looked at what, how, and when.

The entry is appended *before* the data is returned, so a view that could not be audited is not served.
Payloads carry ids and the kind of view, never the content that was shown.
"""

from __future__ import annotations

from typing import Any

from audit.entry import DICOM_UID_PATTERN
from audit.ledger import Ledger
from audit.review.reviewer import Reviewer
from audit.review.source import AnalysisSummary

VIEWED = "review.viewed"
EXPORTED = "review.exported"
SIGNED_IN = "review.signed_in"
LEDGER_VERIFIED = "review.ledger_verified"


def _study_uid(value: str | None) -> str | None:
    return value if value and len(value) <= 64 and DICOM_UID_PATTERN.match(value) else None


def record_trace_view(ledger: Ledger, reviewer: Reviewer, summary: AnalysisSummary, view: str) -> int:
    """Append ``review.viewed`` for one analysis; returns the entry index."""
    appended = ledger.append(
        VIEWED,
        reviewer.actor,
        {
            "analysis_id": summary.id,
            "view": view,
            "roles": sorted(reviewer.roles),
            "via": reviewer.via,
        },
        patient_ref=f"Patient/{summary.patient_id}" if summary.patient_id else None,
        study_uid=_study_uid(summary.study_uid),
    )
    return appended.index


def record_event(ledger: Ledger, kind: str, reviewer: Reviewer, payload: dict[str, Any]) -> int:
    """Append a review event that names no patient (sign-in, list export, ledger verification)."""
    body = {"roles": sorted(reviewer.roles), "via": reviewer.via, **payload}
    return ledger.append(kind, reviewer.actor, body).index

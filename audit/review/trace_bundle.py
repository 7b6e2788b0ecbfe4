"""FHIR export of one trace: the ledger entries about its study as AuditEvents (IHE BALP) + Provenance.

The entries are selected by the study UID column (every pipeline step of the analysis carries it, as do
reviewers' views) and by the patient for clinician feedback on its cards; ``audit.export`` does the
mapping and validates the Bundle.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from audit.export import export_bundle
from audit.ledger import Ledger
from audit.review.source import AnalysisSummary
from audit.tables import entries

MAX_ENTRIES = 5000


def trace_entry_indexes(ledger: Ledger, summary: AnalysisSummary) -> list[int]:
    """Indexes of the ledger entries that belong to this analysis's story, in log order."""
    condition = entries.c.study_uid == summary.study_uid
    if summary.patient_id:
        condition = condition | (
            (entries.c.patient_ref == f"Patient/{summary.patient_id}") & (entries.c.kind == "cds.feedback")
        )
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(entries.c.leaf_index).where(condition).order_by(entries.c.leaf_index).limit(MAX_ENTRIES)
        ).scalars()
        return [int(i) for i in rows]


def trace_bundle(ledger: Ledger, summary: AnalysisSummary) -> dict[str, Any]:
    chosen = [ledger.entry(i) for i in trace_entry_indexes(ledger, summary)]
    return export_bundle(chosen, origin=ledger.config.origin)

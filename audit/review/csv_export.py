"""CSV export of an analyses search, safe to open in a spreadsheet.

Cells that a spreadsheet would run as a formula (leading ``=``, ``+``, ``-``, ``@``, tab, CR) are prefixed
with a quote (OWASP CSV injection guidance): model output and ids are data, never instructions.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from audit.review.source import AnalysisSummary

COLUMNS = (
    "analysis_id",
    "queued_at",
    "completed_at",
    "status",
    "patient_id",
    "study_uid",
    "architecture",
    "model_version",
    "untrained_model",
    "severity",
    "statements",
    "rejected_statements",
    "outcome",
)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def analyses_csv(rows: Iterable[AnalysisSummary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for s in rows:
        writer.writerow(
            _cell(v)
            for v in (
                s.id,
                s.queued_at.isoformat(),
                s.completed_at.isoformat() if s.completed_at else None,
                s.status,
                s.patient_id,
                s.study_uid,
                s.architecture,
                s.model_version,
                s.untrained_model,
                s.severity,
                s.statements,
                s.rejected_statements,
                s.outcome.value,
            )
        )
    return out.getvalue()

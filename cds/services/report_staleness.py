"""Which of our drafts a final human report has overtaken (so ``patient-view`` must not show them).

A draft is stale when a DiagnosticReport with status final / amended / corrected exists for the same
study: either our own written-back report (same id, promoted by the radiologist) or any report whose
``imagingStudy`` points at an ImagingStudy with the draft's Study Instance UID, by reference or by
identifier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FINAL_STATUSES = frozenset({"final", "amended", "corrected"})


def study_uid_of(identifier: Any) -> str | None:
    """``urn:oid:1.2.3`` or ``1.2.3`` from a FHIR Identifier; None when it is not a DICOM UID."""
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return None
    value = identifier["value"].removeprefix("urn:oid:")
    return value if value and all(part.isdigit() for part in value.split(".")) else None


@dataclass(frozen=True)
class FinalReports:
    report_ids: frozenset[str]
    study_uids: frozenset[str]

    def overtakes(self, *, study_uid: str, fhir_report_id: str | None) -> bool:
        return study_uid in self.study_uids or (
            fhir_report_id is not None and fhir_report_id in self.report_ids
        )


def final_reports(
    diagnostic_reports: Iterable[dict[str, Any]], imaging_studies: Iterable[dict[str, Any]]
) -> FinalReports:
    uid_by_study_id: dict[str, str] = {}
    for study in imaging_studies:
        for identifier in study.get("identifier", []):
            uid = study_uid_of(identifier)
            if uid and isinstance(study.get("id"), str):
                uid_by_study_id[study["id"]] = uid
    report_ids: set[str] = set()
    study_uids: set[str] = set()
    for report in diagnostic_reports:
        if report.get("resourceType") != "DiagnosticReport" or report.get("status") not in FINAL_STATUSES:
            continue
        if isinstance(report.get("id"), str):
            report_ids.add(report["id"])
        for ref in report.get("imagingStudy", []):
            if not isinstance(ref, dict):
                continue
            target = str(ref.get("reference", ""))
            if target.startswith("ImagingStudy/") and target.split("/")[1] in uid_by_study_id:
                study_uids.add(uid_by_study_id[target.split("/")[1]])
            uid = study_uid_of(ref.get("identifier"))
            if uid:
                study_uids.add(uid)
    return FinalReports(frozenset(report_ids), frozenset(study_uids))

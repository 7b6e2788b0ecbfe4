"""``patient-view``: a card per current AI draft report of the patient, plus signals it raised.

Drafts overtaken by a final human report are not shown. That check needs the patient's final
DiagnosticReports and ImagingStudies; when they cannot be obtained (FHIR server down, timed out) no
draft card is shown at all — showing one that may already be wrong is worse than showing none — and the
reason goes to the audit entry.
"""

from __future__ import annotations

import threading
import uuid
from weakref import WeakKeyDictionary

from cds.cards import Card
from cds.discovery import USAGE_REQUIREMENTS, ServiceDefinition
from cds.hook_call import HookCall, HookOutcome
from cds.hook_request import PatientViewContext
from cds.services.draft_cache import draft_cache_for
from cds.services.report_cards import report_card, signal_cards
from cds.services.report_staleness import final_reports
from integrations.store.models import Report

FINAL_REPORTS_TEMPLATE = (
    "DiagnosticReport?patient={{context.patientId}}&status=final,amended,corrected&_sort=-date"
)
IMAGING_STUDIES_TEMPLATE = "ImagingStudy?patient={{context.patientId}}"

SERVICE = ServiceDefinition(
    id="veritrace-patient-view",
    hook="patient-view",
    title="Veritrace AI draft imaging reports",
    description=(
        "Shows the patient's preliminary AI-drafted imaging reports with their severity, the "
        "verification status of the evidence they cite and a link to the draft viewer, plus rare-disease "
        "or safety signals the analysis raised. Drafts superseded by a final report are not shown."
    ),
    prefetch={"finalReports": FINAL_REPORTS_TEMPLATE, "imagingStudies": IMAGING_STUDIES_TEMPLATE},
    usageRequirements=USAGE_REQUIREMENTS,
)


def patient_view_cards(call: HookCall) -> HookOutcome:
    assert isinstance(call.context, PatientViewContext)
    outcome = HookOutcome()
    reports = call.prefetch.get("finalReports")
    studies = call.prefetch.get("imagingStudies")
    drafts = draft_cache_for(call.session_factory).drafts(call.context.patientId)
    if not drafts:
        return outcome
    if reports is None or studies is None:
        missing = [k for k in ("finalReports", "imagingStudies") if call.prefetch.get(k) is None]
        reasons = "; ".join(f"{k}: {call.prefetch.unavailable.get(k, 'unavailable')}" for k in missing)
        outcome.skipped.append(f"{len(drafts)} draft card(s) withheld: staleness unknown ({reasons})")
        return outcome
    finals = final_reports(reports, studies)
    for report in drafts:
        if finals.overtakes(study_uid=report.study_uid, fhir_report_id=report.fhir_report_id):
            outcome.skipped.append("draft withheld: a final report exists for its study")
            continue
        for template in _cards_of(report, call.public_base_url, call.smart_viewer):
            card = template.model_copy(update={"uuid": str(uuid.uuid4())})  # every call its own card ids
            outcome.cards.append(card)
            outcome.card_reports[card.uuid] = report.id
    return outcome


_BUILT: WeakKeyDictionary[Report, dict[tuple[str, bool], tuple[Card, ...]]] = WeakKeyDictionary()
_BUILT_LOCK = threading.Lock()


def _cards_of(report: Report, public_base_url: str, smart_viewer: bool) -> tuple[Card, ...]:
    """The report's cards, built once per cached report snapshot (``draft_cache``), base URL and link kind.

    A card's content depends only on the report, the base URL and whether the viewer is a SMART app;
    building and validating it was about a tenth of a call. Entries go with the snapshot when the
    draft cache drops it.
    """
    key = (public_base_url, smart_viewer)
    with _BUILT_LOCK:
        built = _BUILT.get(report, {}).get(key)
    if built is None:
        built = (
            report_card(report, public_base_url, smart_viewer=smart_viewer),
            *signal_cards(report, public_base_url, smart_viewer=smart_viewer),
        )
        with _BUILT_LOCK:
            _BUILT.setdefault(report, {})[key] = built
    return built

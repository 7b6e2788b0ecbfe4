"""``encounter-discharge``: AI findings still awaiting follow-up when the patient leaves.

A finding is unresolved when its draft report is current (not superseded, not overtaken by a final
report) and no clinician has accepted a card about that report (the discharge card offers an
action-less "follow-up arranged" suggestion for exactly that); it needs follow-up when its severity is
above normal or its text asks for follow-up (incidental findings usually do). Same staleness rule and
degradation as ``patient-view``, and the same viewer link (``smart`` when the viewer is registered).
"""

from __future__ import annotations

import re

from cds.cards import Card, Indicator, Suggestion, shorten_summary
from cds.discovery import USAGE_REQUIREMENTS, ServiceDefinition
from cds.hook_call import HookCall, HookOutcome, override_reasons, source
from cds.hook_request import EncounterDischargeContext
from cds.services.draft_reports import acknowledged_report_ids, current_drafts
from cds.services.patient_view import FINAL_REPORTS_TEMPLATE, IMAGING_STUDIES_TEMPLATE
from cds.services.report_cards import UNTRAINED_LABEL, draft_viewer_link
from cds.services.report_staleness import final_reports

FOLLOW_UP = re.compile(r"follow[- ]?up|recommend|incidental|further (evaluation|imaging)", re.IGNORECASE)
SEVERITY_ORDER = {"normal": 0, "minor": 1, "moderate": 2, "critical": 3}

SERVICE = ServiceDefinition(
    id="veritrace-encounter-discharge",
    hook="encounter-discharge",
    title="Veritrace unresolved AI imaging findings at discharge",
    description=(
        "Before discharge, lists findings of current AI-drafted imaging reports that need follow-up "
        "(e.g. incidental findings) and that no clinician has acknowledged yet."
    ),
    prefetch={"finalReports": FINAL_REPORTS_TEMPLATE, "imagingStudies": IMAGING_STUDIES_TEMPLATE},
    usageRequirements=USAGE_REQUIREMENTS,
)

DISCHARGE_OVERRIDES = override_reasons(
    ("follow-up-arranged", "Follow-up already arranged"),
    ("disagree-with-finding", "Disagree with the AI finding"),
    ("not-relevant", "Not relevant to this patient"),
)


def needs_follow_up(statement: dict[str, object]) -> bool:
    severity = SEVERITY_ORDER.get(str(statement.get("severity", "normal")), 0)
    return severity > 0 or bool(FOLLOW_UP.search(str(statement.get("text", ""))))


def encounter_discharge_cards(call: HookCall) -> HookOutcome:
    assert isinstance(call.context, EncounterDischargeContext)
    outcome = HookOutcome()
    reports, studies = call.prefetch.get("finalReports"), call.prefetch.get("imagingStudies")
    with call.session_factory() as session:
        drafts = current_drafts(session, patient_id=call.context.patientId)
        acknowledged = acknowledged_report_ids(session, report_ids=[r.id for r in drafts])
    if not drafts:
        return outcome
    if reports is None or studies is None:
        outcome.skipped.append(f"{len(drafts)} report(s) not checked: staleness unknown")
        return outcome
    finals = final_reports(reports, studies)
    for report in drafts:
        if report.id in acknowledged or finals.overtakes(
            study_uid=report.study_uid, fhir_report_id=report.fhir_report_id
        ):
            continue
        body = report.body or {}
        pending = [s for s in body.get("findings", []) if isinstance(s, dict) and needs_follow_up(s)]
        if not pending:
            continue
        worst = max(SEVERITY_ORDER.get(str(s.get("severity", "normal")), 0) for s in pending)
        prefix = f"[{UNTRAINED_LABEL}] " if report.untrained_model else ""
        detail = "**Unresolved findings of a preliminary AI draft report:**\n" + "\n".join(
            f"- ({s.get('severity', 'normal')}) {s.get('text', '')}" for s in pending
        )
        card = Card(
            summary=shorten_summary(
                f"{prefix}{len(pending)} AI imaging finding(s) need follow-up before discharge"
            ),
            detail=detail,
            indicator=Indicator.CRITICAL if worst == 3 else Indicator.WARNING,
            source=source("Veritrace AI draft report", "unresolved-finding", "Unresolved AI finding"),
            # Accepting this (action-less) suggestion is how a clinician marks the findings resolved:
            # the feedback endpoint records it and later discharge calls no longer list them.
            suggestions=(Suggestion(label="Follow-up arranged: mark these findings resolved"),),
            selectionBehavior="at-most-one",
            overrideReasons=DISCHARGE_OVERRIDES,
            links=(draft_viewer_link(report.id, call.public_base_url, smart_viewer=call.smart_viewer),),
            extension={
                "veritrace.report": {
                    "reportId": report.id,
                    "studyUid": report.study_uid,
                    "pending": len(pending),
                }
            },
        )
        outcome.cards.append(card)
        outcome.card_reports[card.uuid] = report.id
    return outcome

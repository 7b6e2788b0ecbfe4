"""Everything the viewer page shows about one stored draft, read from the store and the ledger.

Verdicts come from the verifier when the trace recorded them (a ``verification`` step, which also
lists statements it rejected and removed from the body), else from a statement's own ``verification``
field, else the statement is shown as not verified. Citations resolve against the trace's evidence
(FHIR resource versions) and images (DICOM frames of this study's instances).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import Ledger
from cds.viewer.ledger_status import LedgerProofStatus, draft_proof_status
from integrations.store.models import Analysis, Instance, Report, Study
from integrations.store.models import Card as StoredCard

Verdict = Literal["verified", "rejected", "not verified"]
MAX_KEY_IMAGES = 6


@dataclass(frozen=True)
class CitationView:
    id: str
    kind: Literal["fhir", "image", "unknown"]
    label: str
    instance_id: int | None = None
    frame: int = 0


@dataclass(frozen=True)
class StatementView:
    section: str
    text: str
    severity: str
    laterality: str
    verdict: Verdict
    reason: str | None
    citations: tuple[CitationView, ...]


@dataclass(frozen=True)
class KeyImageView:
    instance_id: int
    frame: int
    label: str
    cited: bool


@dataclass(frozen=True)
class TraceStepView:
    kind: str
    at: str
    summary: str


@dataclass(frozen=True)
class OverrideReasonView:
    code: str
    display: str
    system: str | None


@dataclass(frozen=True)
class ReportView:
    report_id: str
    patient_id: str | None
    study_uid: str
    status: str
    created_at: datetime
    severity: str
    summary: str
    untrained: bool
    statements: tuple[StatementView, ...]
    key_images: tuple[KeyImageView, ...]
    trace_steps: tuple[TraceStepView, ...]
    model_identity: tuple[tuple[str, str], ...]
    proof: LedgerProofStatus
    card_uuid: str | None
    override_reasons: tuple[OverrideReasonView, ...]


def _verdict_of(value: Any) -> tuple[Verdict, str | None]:
    if isinstance(value, dict):
        if isinstance(value.get("supported"), bool):
            return ("verified" if value["supported"] else "rejected"), value.get("reason")
        value = value.get("verdict") or value.get("status")
    if value in ("verified", "supported", True):
        return "verified", None
    if value in ("rejected", "unsupported", False):
        return "rejected", None
    return "not verified", None


def _verification_step(trace: dict[str, Any]) -> list[dict[str, Any]] | None:
    for step in trace.get("steps", []):
        if isinstance(step, dict) and step.get("kind") == "verification":
            verdicts = (step.get("detail") or {}).get("verdicts")
            if isinstance(verdicts, list):
                return [v for v in verdicts if isinstance(v, dict)]
    return None


def _citation(
    cid: str, evidence: dict[str, dict[str, Any]], frames: dict[tuple[str, int], int]
) -> CitationView:
    if cid in evidence:
        item = evidence[cid]
        return CitationView(cid, "fhir", str(item.get("display") or f"{item.get('resource_type')} evidence"))
    if cid.startswith("img:"):
        sop, _, frame_text = cid[4:].rpartition(":")
        frame = int(frame_text) if frame_text.isdigit() else 0
        instance_id = frames.get((sop, frame))
        if instance_id is not None:
            return CitationView(cid, "image", f"Image frame {frame + 1}", instance_id, frame)
    return CitationView(cid, "unknown", "Evidence not found in the trace")


def _statements(
    body: dict[str, Any],
    trace: dict[str, Any],
    evidence: dict[str, dict[str, Any]],
    frames: dict[tuple[str, int], int],
) -> list[StatementView]:
    verdicts = _verification_step(trace)
    rows: list[tuple[str, dict[str, Any], Verdict, str | None]] = []
    if verdicts is not None:
        for v in verdicts:
            raw = v.get("statement")
            statement: dict[str, Any] = raw if isinstance(raw, dict) else {}
            verdict, reason = _verdict_of(v)
            rows.append((str(v.get("section", "findings")), statement, verdict, reason))
    else:
        for section in ("findings", "impression"):
            for statement in body.get(section, []):
                if isinstance(statement, dict):
                    verdict, reason = _verdict_of(statement.get("verification"))
                    rows.append((section, statement, verdict, reason))
    return [
        StatementView(
            section=section,
            text=str(statement.get("text", "")),
            severity=str(statement.get("severity", "normal")),
            laterality=str(statement.get("laterality", "none")),
            verdict=verdict,
            reason=reason,
            citations=tuple(_citation(str(c), evidence, frames) for c in statement.get("citations", [])),
        )
        for section, statement, verdict, reason in rows
    ]


def _step_summary(detail: dict[str, Any]) -> str:
    shown = {k: (v[:160] + "…" if isinstance(v, str) and len(v) > 160 else v) for k, v in detail.items()}
    text = json.dumps(shown, default=str, ensure_ascii=False)
    return text if len(text) <= 400 else text[:399] + "…"


def _frames(session: Session, study_uid: str, trace: dict[str, Any]) -> dict[tuple[str, int], int]:
    refs = [r for r in trace.get("images", []) if isinstance(r, dict) and r.get("sop_uid")]
    sops = {str(r["sop_uid"]) for r in refs}
    if not sops:
        return {}
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.id)
        .join(Study, Study.id == Instance.study_id)
        .where(Study.study_uid == study_uid, Instance.sop_instance_uid.in_(sops))
        .order_by(Instance.id)
    ).all()
    by_sop = {sop: instance_id for sop, instance_id in rows}
    return {
        (str(r["sop_uid"]), int(r.get("frame", 0))): by_sop[str(r["sop_uid"])]
        for r in refs
        if str(r["sop_uid"]) in by_sop
    }


def _card(session: Session, report_id: str, card_uuid: str | None) -> StoredCard | None:
    if card_uuid:
        card = session.get(StoredCard, card_uuid)
        if card is not None and card.report_id == report_id:
            return card
    return session.scalars(
        select(StoredCard).where(StoredCard.report_id == report_id).order_by(StoredCard.created_at.desc())
    ).first()


def _override_reasons(card: StoredCard | None) -> tuple[OverrideReasonView, ...]:
    reasons = (card.payload.get("overrideReasons") if card else None) or []
    return tuple(
        OverrideReasonView(str(r["code"]), str(r.get("display") or r["code"]), r.get("system"))
        for r in reasons
        if isinstance(r, dict) and r.get("code")
    )


def load_report_view(
    session: Session, ledger: Ledger, *, report_id: str, card_uuid: str | None = None
) -> ReportView | None:
    """The page's content for ``report_id``, or None when no such report is stored."""
    report = session.get(Report, report_id)
    if report is None:
        return None
    analysis = session.get(Analysis, report.analysis_id)
    trace: dict[str, Any] = (analysis.trace if analysis else None) or {}
    body = report.body or {}
    evidence = {
        str(e["id"]): e
        for e in trace.get("evidence", [])
        if isinstance(e, dict) and isinstance(e.get("id"), str)
    }
    frames = _frames(session, report.study_uid, trace)
    statements = _statements(body, trace, evidence, frames)
    cited = {(c.instance_id, c.frame) for s in statements for c in s.citations if c.kind == "image"}
    images = [
        KeyImageView(instance_id, frame, f"Frame {frame + 1} of image {n + 1}", (instance_id, frame) in cited)
        for n, ((_sop, frame), instance_id) in enumerate(frames.items())
    ]
    images.sort(key=lambda image: not image.cited)
    identity = (analysis.model_identity if analysis else None) or trace.get("model") or {}
    steps = [
        TraceStepView(str(s.get("kind", "?")), str(s.get("at", "")), _step_summary(s.get("detail") or {}))
        for s in trace.get("steps", [])
        if isinstance(s, dict)
    ]
    card = _card(session, report.id, card_uuid)
    return ReportView(
        report_id=report.id,
        patient_id=report.patient_id,
        study_uid=report.study_uid,
        status=report.status,
        created_at=report.created_at,
        severity=report.severity,
        summary=report.summary,
        untrained=report.untrained_model,
        statements=tuple(statements),
        key_images=tuple(images[:MAX_KEY_IMAGES]),
        trace_steps=tuple(steps),
        model_identity=tuple((str(k), str(v)) for k, v in identity.items()),
        proof=draft_proof_status(ledger, report_id=report.id, study_uid=report.study_uid),
        card_uuid=card.uuid if card else None,
        override_reasons=_override_reasons(card),
    )


def evidence_item(session: Session, *, report_id: str, citation_id: str) -> dict[str, Any] | None:
    """The trace's evidence item ``citation_id`` of this report's analysis (what the model was shown)."""
    report = session.get(Report, report_id)
    analysis = session.get(Analysis, report.analysis_id) if report else None
    trace = (analysis.trace if analysis else None) or {}
    for item in trace.get("evidence", []):
        if isinstance(item, dict) and item.get("id") == citation_id:
            return item
    return None


def instance_path(session: Session, *, report_id: str, instance_id: int) -> str | None:
    """The spool-relative path of ``instance_id`` if it belongs to the report's study, else None."""
    row = session.execute(
        select(Instance.spool_path)
        .join(Study, Study.id == Instance.study_id)
        .join(Report, Report.study_uid == Study.study_uid)
        .where(Report.id == report_id, Instance.id == instance_id)
    ).first()
    return row[0] if row else None

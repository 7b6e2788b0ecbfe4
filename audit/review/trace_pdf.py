"""A PDF of one trace for a case review meeting: what was read, what was concluded, on what evidence.

Built with fpdf2's core fonts, which cover Latin-1 only: other characters are replaced (``?``) rather than
failing the export. The footer names who exported it and the ledger entry that recorded the export, so a
printed copy can be traced back to the log.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from audit.review.reviewer import Reviewer
from audit.review.source import TraceDetail


def _latin1(text: object) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


class _TracePdf(FPDF):
    footer_text = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=7)
        self.cell(0, 5, _latin1(f"{self.footer_text}  page {self.page_no()}"), align="C")


def trace_pdf(trace: TraceDetail, reviewer: Reviewer, ledger_entry: int) -> bytes:
    s = trace.summary
    pdf = _TracePdf(format="A4")
    pdf.footer_text = (
        f"Exported {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by {reviewer.actor}; "
        f"export recorded as ledger entry {ledger_entry}"
    )
    pdf.set_title(f"Veritrace trace {s.id}")
    pdf.add_page()
    width = pdf.epw

    def heading(text: str) -> None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 12)
        pdf.multi_cell(width, 7, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("Helvetica", size=9)

    def line(text: str) -> None:
        pdf.multi_cell(width, 5, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    pdf.set_font("Helvetica", "B", 15)
    line("Decision trace for case review")
    pdf.set_font("Helvetica", size=9)
    if s.untrained_model:
        line("UNTRAINED MODEL OUTPUT: produced by randomly initialised test weights, not clinical advice.")
    line(f"Analysis {s.id}  status {s.status}  outcome {s.outcome.value}")
    line(f"Patient {s.patient_id or '-'}  study {s.study_uid}")
    line(f"Queued {s.queued_at:%Y-%m-%d %H:%M:%S} UTC  completed {s.completed_at or '-'}")
    heading("Model")
    for key in ("architecture", "family", "weights_sha256", "dtype", "device", "attention"):
        if key in trace.model:
            line(f"{key}: {trace.model[key]}")
    if trace.prompt_sha256:
        line(f"prompt sha256: {trace.prompt_sha256}")
    heading(f"Draft statements ({s.statements}, {s.rejected_statements} rejected by verification)")
    for st in trace.statements:
        verdict = st.verdict.upper() + (f" ({st.reason})" if st.reason else "")
        line(f"[{st.section} {st.index + 1}] {verdict}: {st.text}")
        if st.citations:
            line(f"    cites: {', '.join(st.citations)}")
        if st.detail:
            line(f"    verifier: {st.detail}")
    heading(f"Evidence read ({len(trace.evidence)})")
    for ev in trace.evidence:
        version = f"/_history/{ev.version_id}" if ev.version_id else ""
        line(f"{ev.id}: {ev.resource_type}/{ev.resource_id}{version} - {ev.display}")
    heading(f"Images looked at ({len(trace.images)})")
    for im in trace.images:
        line(f"{im.citation_id} (series {im.series_uid})")
    heading(f"Steps ({len(trace.steps)})")
    for step in trace.steps:
        when = step.at.strftime("%H:%M:%S.%f")[:-3] if step.at else "-"
        evidence = f"  evidence: {', '.join(step.evidence_ids)}" if step.evidence_ids else ""
        line(f"{when}  {step.kind}{evidence}")
    heading(f"Clinician feedback ({len(trace.feedback)})")
    for fb in trace.feedback:
        reason = f" - {fb.override_reason}" if fb.override_reason else ""
        line(f"{fb.outcome_timestamp:%Y-%m-%d %H:%M} {fb.outcome}{reason} (card {fb.card_uuid})")
    return bytes(pdf.output())

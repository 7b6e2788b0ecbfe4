"""The readable form of a draft report: what the card detail, the viewer and presentedForm show."""

from __future__ import annotations

from collections.abc import Sequence

from model.report import DraftReport, Statement

UNTRAINED_BANNER = (
    "> **Untrained model.** This draft was produced by randomly initialised test weights. "
    "It is not a clinical finding."
)


def _statement_lines(statements: list[Statement]) -> list[str]:
    if not statements:
        return ["- (none)"]
    lines = []
    for statement in statements:
        cites = ", ".join(statement.citations) or "no citation"
        lines.append(f"- [{statement.severity.value}] {statement.text.strip()} _(evidence: {cites})_")
    return lines


def render_report_markdown(
    report: DraftReport,
    *,
    study_uid: str,
    model_label: str,
    rejected: Sequence[tuple[Statement, str]] = (),
) -> str:
    """`rejected` pairs each statement the verifier removed with its reason; they are shown, struck out."""
    parts = ["# AI draft report (preliminary)", ""]
    if report.untrained_model:
        parts += [UNTRAINED_BANNER, ""]
    parts += [f"Study: `{study_uid}`  ", f"Model: {model_label}", "", "## Findings"]
    parts += _statement_lines(report.findings)
    parts += ["", "## Impression"]
    parts += _statement_lines(report.impression)
    if rejected:
        parts += ["", "## Removed by evidence verification"]
        parts += [f"- ~~{statement.text.strip()}~~ — {reason}" for statement, reason in rejected]
    parts += ["", "_Preliminary AI draft for clinician review; sign-off belongs to the radiologist._"]
    return "\n".join(parts) + "\n"


SEVERITY_ORDER = ["normal", "minor", "moderate", "critical"]


def overall_severity(report: DraftReport) -> str:
    levels = [s.severity.value for s in (*report.findings, *report.impression)]
    return max(levels, key=SEVERITY_ORDER.index) if levels else "normal"


def summarise(report: DraftReport, *, rejected: int = 0) -> str:
    """The card's text after its "AI draft (severity)" head: the lead statement, or why there is none."""
    statements = report.impression or report.findings
    if statements:
        text = statements[0].text.strip()
    elif rejected:
        text = f"no statement survived evidence verification ({rejected} removed)"
    else:
        text = "no findings drafted"
    return text if len(text) <= 120 else text[:119] + "…"

"""The store's read side for the compliance review app: ``SqlTraceSource`` implements ``TraceSource``.

Cheap filters (patient, study, dates, model version) run in SQL, and a search using only those reads one
page. The outcome of clinician feedback and the verifier's counts come from JSON (report bodies) and
feedback rows, so filtering on them (and the dashboards) derives them in Python over the SQL-filtered
rows: one code path for SQLite and PostgreSQL, linear in the rows the SQL filters leave.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from audit.review.source import (
    AnalysisFilters,
    AnalysisPage,
    AnalysisSummary,
    EvidenceView,
    FeedbackRecord,
    ImageView,
    Outcome,
    PageRequest,
    SeriesPoint,
    StatementView,
    StepView,
    TraceDetail,
)
from integrations.store.models import Analysis, AnalysisInstance, Card, Feedback, Instance, Report, Study

if TYPE_CHECKING:
    from integrations.dicom.spool import Spool

log = logging.getLogger(__name__)

SUPPORTED_WORDS = frozenset({"supported", "verified", "pass", "passed"})
REJECTED_WORDS = frozenset({"rejected", "unsupported", "failed", "fail", "removed"})


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _statement_view(section: str, index: int, st: dict[str, Any], verdict_raw: object) -> StatementView:
    reason, detail = None, ""
    if isinstance(verdict_raw, dict):
        reason, detail = verdict_raw.get("reason"), str(verdict_raw.get("detail") or "")
        verdict_raw = verdict_raw.get("verdict") or verdict_raw.get("status")
    word = str(verdict_raw).lower() if verdict_raw is not None else ""
    verdict: Literal["supported", "rejected", "unverified"] = (
        "supported" if word in SUPPORTED_WORDS else "rejected" if word in REJECTED_WORDS else "unverified"
    )
    return StatementView(
        section="impression" if section == "impression" else "findings",
        index=index,
        text=str(st.get("text", "")),
        severity=str(st.get("severity", "normal")),
        laterality=str(st.get("laterality", "none")),
        citations=[str(c) for c in st.get("citations", [])],
        verdict=verdict,
        reason=reason,
        detail=detail,
    )


def statement_views(body: dict[str, Any] | None) -> list[StatementView]:
    """Kept statements then rejected ones, with verdicts, from a report body as the worker stores it.

    The worker (``integrations.analysis.pipeline.report_body``) marks each kept statement
    ``verification: {"verdict": "verified"}`` and lists removed ones under ``rejected`` with the reason;
    a body without verification (an older worker) gives ``unverified`` statements.
    """
    if not body:
        return []
    views: list[StatementView] = []
    counts = {"findings": 0, "impression": 0}
    for section in ("findings", "impression"):
        for st in body.get(section) or []:
            if isinstance(st, dict):
                views.append(_statement_view(section, counts[section], st, st.get("verification")))
                counts[section] += 1
    for item in body.get("rejected") or []:
        if not isinstance(item, dict) or not isinstance(item.get("statement"), dict):
            continue
        section = "impression" if item.get("section") == "impression" else "findings"
        raw = item.get("verification") or {"verdict": "rejected"}
        views.append(_statement_view(section, counts[section], item["statement"], raw))
        counts[section] += 1
    return views


class SqlTraceSource:
    """``TraceSource`` over the store's SQLAlchemy models; ``spool`` enables thumbnails."""

    def __init__(self, session_factory: sessionmaker[Session], spool: Spool | None = None) -> None:
        self._sessions = session_factory
        self._spool = spool

    # ------------------------------------------------------------------------------------------ list

    def _rows(
        self, session: Session, filters: AnalysisFilters, page: PageRequest | None = None
    ) -> tuple[list[Any], int | None]:
        """Rows matching the SQL-side filters; with ``page``, only that page and the total count."""
        query = (
            select(Analysis, Study, Report)
            .join(Study, Study.id == Analysis.study_id)
            .outerjoin(Report, Report.analysis_id == Analysis.id)
            .order_by(Analysis.queued_at.desc(), Analysis.id)
        )
        if filters.patient_id:
            query = query.where(
                (Study.patient_id == filters.patient_id) | (Report.patient_id == filters.patient_id)
            )
        if filters.study_uid:
            query = query.where(Study.study_uid == filters.study_uid)
        if filters.date_from:
            query = query.where(Analysis.queued_at >= _day_start(filters.date_from))
        if filters.date_to:
            query = query.where(Analysis.queued_at < _day_start(filters.date_to + timedelta(days=1)))
        if filters.model_version:
            weights = Analysis.model_identity["weights_sha256"].as_string()
            query = query.where(weights.startswith(filters.model_version.lower(), autoescape=True))
        if page is None:
            return list(session.execute(query).all()), None
        total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
        return list(session.execute(query.offset(page.offset).limit(page.per_page)).all()), total

    def _outcomes(self, session: Session, report_ids: Iterable[str]) -> dict[str, Outcome]:
        """Latest feedback outcome per report (by the clinician's outcome timestamp)."""
        ids = [r for r in report_ids if r]
        latest: dict[str, tuple[datetime, Outcome]] = {}
        for start in range(0, len(ids), 500):
            rows = session.execute(
                select(Card.report_id, Feedback.outcome, Feedback.outcome_timestamp)
                .join(Feedback, Feedback.card_uuid == Card.uuid)
                .where(Card.report_id.in_(ids[start : start + 500]))
            ).all()
            for report_id, outcome, moment in rows:
                when = _utc(moment)
                if report_id is None or when is None:
                    continue
                if report_id not in latest or when >= latest[report_id][0]:
                    latest[report_id] = (when, Outcome(outcome))
        return {report_id: outcome for report_id, (_when, outcome) in latest.items()}

    @staticmethod
    def _summary(
        analysis: Analysis, study: Study, report: Report | None, outcome: Outcome
    ) -> AnalysisSummary:
        identity = analysis.model_identity or {}
        views = statement_views(report.body if report else None)
        return AnalysisSummary(
            id=analysis.id,
            study_uid=study.study_uid,
            patient_id=(report.patient_id if report and report.patient_id else study.patient_id),
            status=analysis.status,
            queued_at=_utc(analysis.queued_at) or datetime.now(UTC),
            completed_at=_utc(analysis.completed_at),
            architecture=identity.get("architecture"),
            model_version=identity.get("weights_sha256"),
            untrained_model=bool(identity.get("untrained", report.untrained_model if report else False)),
            severity=report.severity if report else None,
            statements=len(views),
            rejected_statements=sum(1 for v in views if v.verdict == "rejected"),
            outcome=outcome,
        )

    def _summaries(
        self, session: Session, filters: AnalysisFilters, page: PageRequest | None = None
    ) -> list[AnalysisSummary]:
        rows, _total = self._rows(session, filters, page)
        outcomes = self._outcomes(session, (report.id for _a, _s, report in rows if report is not None))
        summaries = []
        for analysis, study, report in rows:
            outcome = outcomes.get(report.id, Outcome.NONE) if report is not None else Outcome.NONE
            summary = self._summary(analysis, study, report, outcome)
            if filters.outcome is not None and summary.outcome != filters.outcome:
                continue
            if filters.verification_failures is not None and (
                (summary.rejected_statements > 0) != filters.verification_failures
            ):
                continue
            summaries.append(summary)
        return summaries

    def list_analyses(self, filters: AnalysisFilters, page: PageRequest) -> AnalysisPage:
        if filters.outcome is None and filters.verification_failures is None:
            # Every filter runs in SQL: read one page and count the rest there.
            with self._sessions() as session:
                rows, total = self._rows(session, filters, page)
                outcomes = self._outcomes(session, (r.id for _a, _s, r in rows if r is not None))
            items = [
                self._summary(a, s, r, outcomes.get(r.id, Outcome.NONE) if r is not None else Outcome.NONE)
                for a, s, r in rows
            ]
            return AnalysisPage(items=items, total=total or 0, page=page.page, per_page=page.per_page)
        with self._sessions() as session:
            summaries = self._summaries(session, filters)
        return AnalysisPage(
            items=summaries[page.offset : page.offset + page.per_page],
            total=len(summaries),
            page=page.page,
            per_page=page.per_page,
        )

    # ----------------------------------------------------------------------------------------- trace

    def feedback_for(self, analysis_id: str) -> list[FeedbackRecord]:
        with self._sessions() as session:
            return self._feedback(session, analysis_id)

    @staticmethod
    def _feedback(session: Session, analysis_id: str) -> list[FeedbackRecord]:
        rows = session.execute(
            select(Feedback)
            .join(Card, Card.uuid == Feedback.card_uuid)
            .join(Report, Report.id == Card.report_id)
            .where(Report.analysis_id == analysis_id)
            .order_by(Feedback.outcome_timestamp, Feedback.id)
        ).scalars()
        records = []
        for fb in rows:
            reason = fb.override_reason or {}
            raw_coding = reason.get("reason")
            coding: dict[str, Any] = raw_coding if isinstance(raw_coding, dict) else {}
            records.append(
                FeedbackRecord(
                    card_uuid=fb.card_uuid,
                    service_id=fb.service_id,
                    outcome="accepted" if fb.outcome == "accepted" else "overridden",
                    override_reason=coding.get("display") or coding.get("code"),
                    comment=reason.get("userComment"),
                    accepted_suggestions=[str(s) for s in fb.accepted_suggestions or []],
                    outcome_timestamp=_utc(fb.outcome_timestamp) or datetime.now(UTC),
                )
            )
        return records

    def get_trace(self, analysis_id: str) -> TraceDetail | None:
        with self._sessions() as session:
            row = session.execute(
                select(Analysis, Study, Report)
                .join(Study, Study.id == Analysis.study_id)
                .outerjoin(Report, Report.analysis_id == Analysis.id)
                .where(Analysis.id == analysis_id)
            ).first()
            if row is None:
                return None
            analysis, study, report = row
            feedback = self._feedback(session, analysis_id)
        latest = (
            Outcome(max(feedback, key=lambda f: f.outcome_timestamp).outcome) if feedback else Outcome.NONE
        )
        trace = analysis.trace or {}
        return TraceDetail(
            summary=self._summary(analysis, study, report, latest),
            model=dict(analysis.model_identity or trace.get("model") or {}),
            prompt_sha256=trace.get("prompt_sha256"),
            elapsed_s=trace.get("elapsed_s"),
            error=analysis.error,
            steps=[_step_view(s) for s in trace.get("steps", []) if isinstance(s, dict)],
            evidence=[
                EvidenceView.model_validate(e) for e in trace.get("evidence", []) if isinstance(e, dict)
            ],
            images=_image_views(trace.get("images", [])),
            statements=statement_views(report.body if report else None),
            markdown=report.markdown if report else None,
            feedback=feedback,
        )

    def thumbnail_png(self, analysis_id: str, position: int, max_side: int) -> bytes | None:
        if self._spool is None:
            return None
        with self._sessions() as session:
            analysis = session.get(Analysis, analysis_id)
            if analysis is None:
                return None
            images = _image_views((analysis.trace or {}).get("images", []))
            if not 0 <= position < len(images):
                return None
            wanted = images[position]
            spool_path = session.scalar(
                select(Instance.spool_path)
                .join(AnalysisInstance, AnalysisInstance.instance_id == Instance.id)
                .where(
                    AnalysisInstance.analysis_id == analysis_id,
                    Instance.sop_instance_uid == wanted.sop_uid,
                )
                .limit(1)
            )
        if spool_path is None:
            return None
        from model.imaging import DicomImageError, load_model_image

        try:
            stored = self._spool.stored(spool_path)
            if not stored.exists():
                return None
            image = load_model_image(stored, frame=wanted.frame, max_side=max_side).image
        except (DicomImageError, ValueError, OSError) as exc:
            log.warning("thumbnail not rendered: %s", type(exc).__name__)
            return None
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    # ------------------------------------------------------------------------------------ dashboards

    def dashboard_series(
        self, date_from: date, date_to: date, bucket: Literal["day", "week"]
    ) -> list[SeriesPoint]:
        with self._sessions() as session:
            summaries = self._summaries(session, AnalysisFilters(date_from=date_from, date_to=date_to))
        groups: dict[tuple[date, str], list[AnalysisSummary]] = defaultdict(list)
        for summary in summaries:
            if summary.status != "completed":
                continue
            day = summary.queued_at.astimezone(UTC).date()
            period = day - timedelta(days=day.weekday()) if bucket == "week" else day
            groups[(period, (summary.model_version or "unknown")[:12])].append(summary)
        return [
            SeriesPoint(
                period=period,
                model_version=version,
                analyses=len(items),
                with_feedback=sum(1 for s in items if s.outcome != Outcome.NONE),
                overridden=sum(1 for s in items if s.outcome == Outcome.OVERRIDDEN),
                statements=sum(s.statements for s in items),
                rejected_statements=sum(s.rejected_statements for s in items),
            )
            for (period, version), items in sorted(groups.items())
        ]


def _step_view(step: dict[str, Any]) -> StepView:
    detail = step.get("detail") if isinstance(step.get("detail"), dict) else {}
    assert isinstance(detail, dict)
    evidence: list[str] = []
    for key in ("evidence_ids", "evidence"):
        value = detail.get(key)
        if isinstance(value, list):
            evidence += [v if isinstance(v, str) else str(v.get("id")) for v in value if v]
    at = step.get("at")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    return StepView(kind=str(step.get("kind", "?")), at=when, detail=detail, evidence_ids=evidence)


def _image_views(raw: object) -> list[ImageView]:
    views: list[ImageView] = []
    if not isinstance(raw, list):
        return views
    for item in raw:
        if not isinstance(item, dict) or "sop_uid" not in item:
            continue
        frame = int(item.get("frame", 0))
        views.append(
            ImageView(
                position=len(views),
                citation_id=f"img:{item['sop_uid']}:{frame}",
                series_uid=str(item.get("series_uid", "")),
                sop_uid=str(item["sop_uid"]),
                frame=frame,
            )
        )
    return views

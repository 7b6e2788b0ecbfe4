"""The JSON API under ``/review/api`` that the pages use; every call checks the session and the role.

Patient and study identifiers are accepted only in POST bodies (``/analyses/search``,
``/hook-calls/search``), never in query strings, so they stay out of URLs, proxy logs and browser history.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from audit.ledger import UnknownEntry
from audit.review.access_log import EXPORTED, record_event, record_trace_view
from audit.review.csv_export import analyses_csv
from audit.review.entry_proof import EntryProof, entry_proof, latest_checkpoint_view
from audit.review.gate import api_session, check_csrf
from audit.review.hook_calls import HookCallPage, list_hook_calls
from audit.review.roles import Permission
from audit.review.source import AnalysisFilters, AnalysisPage, Outcome, PageRequest, TraceDetail
from audit.review.state import ReviewState
from audit.review.trace_bundle import trace_bundle
from audit.review.trace_pdf import trace_pdf
from audit.review.verify_jobs import VerifyJob

MAX_EXPORT_ROWS = 10_000
THUMBNAIL_SIDE = 256


class AnalysisSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filters: AnalysisFilters = Field(default_factory=AnalysisFilters)
    page: int = Field(default=1, ge=1, le=100_000)
    per_page: int = Field(default=25, ge=1, le=100)


class HookCallSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    date_from: date | None = None
    date_to: date | None = None
    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=25, ge=1, le=100)


def dashboard_data(state: ReviewState, days: int, bucket: Literal["day", "week"]) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    points = state.source.dashboard_series(today - timedelta(days=days - 1), today, bucket)
    return {
        "bucket": bucket,
        "date_from": (today - timedelta(days=days - 1)).isoformat(),
        "date_to": today.isoformat(),
        "series": [
            {
                **p.model_dump(mode="json"),
                "override_rate": p.override_rate,
                "verification_failure_rate": p.verification_failure_rate,
            }
            for p in points
        ],
    }


def load_trace(state: ReviewState, analysis_id: str) -> TraceDetail:
    if len(analysis_id) > 64:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such analysis")
    trace = state.source.get_trace(analysis_id)
    if trace is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such analysis")
    return trace


def build_api_router(state: ReviewState) -> APIRouter:
    router = APIRouter(prefix="/review/api")

    @router.get("/analyses")
    def analyses(
        request: Request,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=100)] = 25,
        date_from: date | None = None,
        date_to: date | None = None,
        model_version: Annotated[str | None, Query(min_length=4, max_length=64)] = None,
        outcome: Outcome | None = None,
        verification_failures: bool | None = None,
    ) -> AnalysisPage:
        """Filters without patient identifiers; use POST /analyses/search to filter by patient or study."""
        api_session(state, request, Permission.VIEW_TRACES)
        try:
            filters = AnalysisFilters(
                date_from=date_from,
                date_to=date_to,
                model_version=model_version,
                outcome=outcome,
                verification_failures=verification_failures,
            )
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid filters") from exc
        return state.source.list_analyses(filters, PageRequest(page=page, per_page=per_page))

    @router.post("/analyses/search")
    def search_analyses(request: Request, search: AnalysisSearch) -> AnalysisPage:
        session = api_session(state, request, Permission.VIEW_TRACES)
        check_csrf(session, request)
        return state.source.list_analyses(
            search.filters, PageRequest(page=search.page, per_page=search.per_page)
        )

    @router.get("/analyses/export.csv")
    def export_csv(request: Request, search: Annotated[str, Query(max_length=40)] = "") -> Response:
        """CSV of a saved search (the opaque token the list page shows) or of every analysis."""
        session = api_session(state, request, Permission.EXPORT)
        filters = session.searches.get(search, AnalysisFilters()) if search else AnalysisFilters()
        result = state.source.list_analyses(filters, PageRequest(page=1, per_page=100))
        rows = list(result.items)
        page = 2
        while len(rows) < min(result.total, MAX_EXPORT_ROWS):
            rows += state.source.list_analyses(filters, PageRequest(page=page, per_page=100)).items
            page += 1
        record_event(state.ledger, EXPORTED, session.reviewer, {"format": "csv", "rows": len(rows)})
        return Response(
            analyses_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="veritrace-analyses.csv"'},
        )

    @router.get("/traces/{analysis_id}")
    def trace(request: Request, analysis_id: str) -> TraceDetail:
        """One trace; the view is recorded in the ledger before it is returned."""
        session = api_session(state, request, Permission.VIEW_TRACES)
        detail = load_trace(state, analysis_id)
        record_trace_view(state.ledger, session.reviewer, detail.summary, "api")
        return detail

    @router.get("/traces/{analysis_id}/images/{position}")
    def thumbnail(request: Request, analysis_id: str, position: int) -> Response:
        api_session(state, request, Permission.VIEW_TRACES)
        if not state.config.spool_thumbnails or len(analysis_id) > 64:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no thumbnail")
        png = state.source.thumbnail_png(analysis_id, position, THUMBNAIL_SIDE)
        if png is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no thumbnail")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @router.get("/traces/{analysis_id}/export.fhir.json")
    def export_fhir(request: Request, analysis_id: str) -> Response:
        """The trace's ledger entries as a FHIR Bundle of AuditEvent (IHE BALP) and Provenance."""
        session = api_session(state, request, Permission.EXPORT)
        detail = load_trace(state, analysis_id)
        record_trace_view(state.ledger, session.reviewer, detail.summary, "export-fhir")
        bundle = trace_bundle(state.ledger, detail.summary)
        return JSONResponse(
            bundle,
            media_type="application/fhir+json",
            headers={"Content-Disposition": f'attachment; filename="trace-{detail.summary.id}.fhir.json"'},
        )

    @router.get("/traces/{analysis_id}/export.pdf")
    def export_pdf(request: Request, analysis_id: str) -> Response:
        session = api_session(state, request, Permission.EXPORT)
        detail = load_trace(state, analysis_id)
        entry = record_trace_view(state.ledger, session.reviewer, detail.summary, "export-pdf")
        return Response(
            trace_pdf(detail, session.reviewer, entry),
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="trace-{detail.summary.id}.pdf"'},
        )

    @router.get("/hook-calls")
    def hook_calls(
        request: Request,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=100)] = 25,
        date_from: date | None = None,
        date_to: date | None = None,
    ) -> HookCallPage:
        api_session(state, request, Permission.VIEW_HOOK_CALLS)
        return list_hook_calls(
            state.ledger, PageRequest(page=page, per_page=per_page), date_from=date_from, date_to=date_to
        )

    @router.post("/hook-calls/search")
    def search_hook_calls(request: Request, search: HookCallSearch) -> HookCallPage:
        session = api_session(state, request, Permission.VIEW_HOOK_CALLS)
        check_csrf(session, request)
        return list_hook_calls(
            state.ledger,
            PageRequest(page=search.page, per_page=search.per_page),
            patient_id=search.patient_id,
            date_from=search.date_from,
            date_to=search.date_to,
        )

    @router.get("/ledger/checkpoint")
    def checkpoint(request: Request) -> dict[str, Any]:
        api_session(state, request, Permission.VIEW_LEDGER)
        view = latest_checkpoint_view(state.ledger)
        return {"size": state.ledger.size(), "checkpoint": view.model_dump() if view else None}

    @router.get("/ledger/entries/{index}")
    def ledger_entry(request: Request, index: int) -> EntryProof:
        """The entry's hashed bytes, its inclusion proof and the server's own verdict on it."""
        api_session(state, request, Permission.VIEW_LEDGER)
        if index < 0:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "index must be >= 0")
        try:
            return entry_proof(state.ledger, index)
        except UnknownEntry as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"the ledger has no entry {index}") from exc

    @router.post("/ledger/verify", status_code=status.HTTP_202_ACCEPTED)
    def start_verify(request: Request) -> VerifyJob:
        session = api_session(state, request, Permission.VERIFY_LEDGER)
        check_csrf(session, request)
        return state.verify_jobs.start(session.reviewer)

    @router.get("/ledger/verify/{job_id}")
    def verify_status(request: Request, job_id: str) -> VerifyJob:
        api_session(state, request, Permission.VERIFY_LEDGER)
        job = state.verify_jobs.get(job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such verification run")
        return job

    @router.get("/dashboard")
    def dashboard(
        request: Request,
        days: Annotated[int, Query(ge=1, le=730)] = 90,
        bucket: Literal["day", "week"] = "week",
    ) -> dict[str, Any]:
        api_session(state, request, Permission.VIEW_DASHBOARDS)
        return dashboard_data(state, days, bucket)

    @router.get("/model-card")
    def model_card(request: Request) -> dict[str, Any]:
        api_session(state, request, Permission.VIEW_MODEL_CARD)
        return {
            "name": state.model_card.name,
            "sections": [
                {
                    "title": title,
                    "attributes": [{"key": k, "label": label, "value": v} for k, label, v in items],
                }
                for title, items in state.model_card.sections()
            ],
        }

    return router

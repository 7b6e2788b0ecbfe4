"""The HTML pages: analyses and hook-call search, trace view, ledger, dashboards, model card.

Pages are rendered on the server (they work without script; the ledger page's in-browser proof check and
verify-now progress are the only parts that need it). Search filters are POSTed and kept in the session
under an opaque token, so the URL of a result page never holds a patient or study identifier.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from audit.review.access_log import record_trace_view
from audit.review.api_routes import dashboard_data, load_trace
from audit.review.charts import Line, every_period, line_chart
from audit.review.entry_proof import latest_checkpoint_view
from audit.review.gate import SECURITY_HEADERS, check_csrf, page_session
from audit.review.hook_calls import list_hook_calls
from audit.review.roles import Permission
from audit.review.source import AnalysisFilters, Outcome, PageRequest
from audit.review.state import PACKAGE_DIR, ReviewState

STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


def _optional(value: str) -> str | None:
    value = value.strip()
    return value or None


def build_page_router(state: ReviewState) -> APIRouter:
    router = APIRouter(prefix="/review")

    def render(request: Request, template: str, context: dict[str, Any], code: int = 200) -> Response:
        response = state.templates.TemplateResponse(request, template, context, status_code=code)
        response.headers.update(SECURITY_HEADERS)
        return response

    @router.get("/")
    def home() -> Response:
        return RedirectResponse("/review/analyses", status_code=status.HTTP_303_SEE_OTHER)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        """The app's own CSS and JS (no CDN: the API may run without internet)."""
        path = PACKAGE_DIR / "static" / name
        media = STATIC_TYPES.get(path.suffix)
        if media is None or "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=300"})

    @router.post("/search")
    def search(
        request: Request,
        csrf_token: Annotated[str, Form()] = "",
        target: Annotated[Literal["analyses", "hook-calls"], Form()] = "analyses",
        patient_id: Annotated[str, Form(max_length=64)] = "",
        study_uid: Annotated[str, Form(max_length=64)] = "",
        date_from: Annotated[str, Form(max_length=10)] = "",
        date_to: Annotated[str, Form(max_length=10)] = "",
        model_version: Annotated[str, Form(max_length=64)] = "",
        outcome: Annotated[str, Form(max_length=16)] = "",
        verification: Annotated[str, Form(max_length=8)] = "",
    ) -> Response:
        """Keep the filters in the session and redirect to the results under an opaque token."""
        gate = page_session(state, request, Permission.VIEW_TRACES)
        if isinstance(gate, Response):
            return gate
        check_csrf(gate, request, csrf_token)
        try:
            filters = AnalysisFilters(
                patient_id=_optional(patient_id),
                study_uid=_optional(study_uid),
                date_from=date.fromisoformat(date_from) if date_from else None,
                date_to=date.fromisoformat(date_to) if date_to else None,
                model_version=_optional(model_version),
                outcome=Outcome(outcome) if outcome else None,
                verification_failures={"yes": True, "no": False}.get(verification),
            )
        except (ValidationError, ValueError):
            return RedirectResponse(f"/review/{target}?invalid=1", status_code=status.HTTP_303_SEE_OTHER)
        token = state.sessions.save_search(gate, filters)
        return RedirectResponse(f"/review/{target}?search={token}", status_code=status.HTTP_303_SEE_OTHER)

    @router.get("/analyses")
    def analyses(request: Request, search: str = "", page: int = 1, invalid: int = 0) -> Response:
        gate = page_session(state, request, Permission.VIEW_TRACES)
        if isinstance(gate, Response):
            return gate
        filters = gate.searches.get(search, AnalysisFilters())
        result = state.source.list_analyses(filters, PageRequest(page=max(1, min(page, 100_000))))
        return render(
            request,
            "analyses.html",
            {
                "session": gate,
                "filters": filters,
                "result": result,
                "search": search if search in gate.searches else "",
                "invalid": bool(invalid),
                "outcomes": list(Outcome),
                "can_export": gate.reviewer.may(Permission.EXPORT),
            },
        )

    @router.get("/hook-calls")
    def hook_calls(request: Request, search: str = "", page: int = 1) -> Response:
        gate = page_session(state, request, Permission.VIEW_HOOK_CALLS)
        if isinstance(gate, Response):
            return gate
        filters = gate.searches.get(search, AnalysisFilters())
        result = list_hook_calls(
            state.ledger,
            PageRequest(page=max(1, page)),
            patient_id=filters.patient_id,
            date_from=filters.date_from,
            date_to=filters.date_to,
        )
        pages = max(1, -(-result.total // result.per_page))
        return render(
            request,
            "hook_calls.html",
            {"session": gate, "filters": filters, "result": result, "pages": pages, "search": search},
        )

    @router.get("/traces/{analysis_id}")
    def trace(request: Request, analysis_id: str) -> Response:
        """The trace page; the view is a ledger entry, written before the page is sent."""
        gate = page_session(state, request, Permission.VIEW_TRACES)
        if isinstance(gate, Response):
            return gate
        detail = load_trace(state, analysis_id)
        entry = record_trace_view(state.ledger, gate.reviewer, detail.summary, "page")
        evidence = {e.id: e for e in detail.evidence}
        return render(
            request,
            "trace.html",
            {
                "session": gate,
                "t": detail,
                "s": detail.summary,
                "evidence_by_id": evidence,
                "view_entry": entry,
                "can_export": gate.reviewer.may(Permission.EXPORT),
                "can_ledger": gate.reviewer.may(Permission.VIEW_LEDGER),
                "thumbnails": state.config.spool_thumbnails,
            },
        )

    @router.get("/ledger")
    def ledger(request: Request) -> Response:
        gate = page_session(state, request, Permission.VIEW_LEDGER)
        if isinstance(gate, Response):
            return gate
        return render(
            request,
            "ledger.html",
            {
                "session": gate,
                "checkpoint": latest_checkpoint_view(state.ledger),
                "size": state.ledger.size(),
                "can_verify": gate.reviewer.may(Permission.VERIFY_LEDGER),
            },
        )

    @router.get("/dashboards")
    def dashboards(request: Request, days: int = 90, bucket: Literal["day", "week"] = "week") -> Response:
        gate = page_session(state, request, Permission.VIEW_DASHBOARDS)
        if isinstance(gate, Response):
            return gate
        data = dashboard_data(state, max(1, min(days, 730)), bucket)
        series = data["series"]
        seen = sorted({date.fromisoformat(p["period"]) for p in series})
        periods = every_period(seen[0], seen[-1], bucket) if seen else []
        versions = sorted({p["model_version"] for p in series})

        def lines(metric: str) -> list[Line]:
            # A period without analyses has volume 0 but no rate (nothing to divide by).
            return [
                Line(
                    label=v,
                    points={
                        **({period: 0.0 for period in periods} if metric == "analyses" else {}),
                        **{
                            date.fromisoformat(p["period"]): float(p[metric])
                            for p in series
                            if p["model_version"] == v and p[metric] is not None
                        },
                    },
                )
                for v in versions
            ]

        specs = [
            ("Analyses per " + bucket, "analyses", False, "volume"),
            ("Override rate (of analyses with feedback)", "override_rate", True, "override"),
            (
                "Verification failure rate (rejected statements)",
                "verification_failure_rate",
                True,
                "verification",
            ),
        ]
        charts = [
            (title, line_chart(title, periods, lines(metric), percent=percent, chart_id=chart_id))
            for title, metric, percent, chart_id in specs
        ]
        return render(
            request,
            "dashboards.html",
            {"session": gate, "charts": charts, "series": series, "data": data, "days": days},
        )

    @router.get("/model-card")
    def model_card(request: Request) -> Response:
        gate = page_session(state, request, Permission.VIEW_MODEL_CARD)
        if isinstance(gate, Response):
            return gate
        data = dashboard_data(state, 365, "week")
        local: dict[str, dict[str, int]] = {}
        for p in data["series"]:
            row = local.setdefault(
                p["model_version"],
                {"analyses": 0, "with_feedback": 0, "overridden": 0, "rejected": 0, "statements": 0},
            )
            row["analyses"] += p["analyses"]
            row["with_feedback"] += p["with_feedback"]
            row["overridden"] += p["overridden"]
            row["rejected"] += p["rejected_statements"]
            row["statements"] += p["statements"]
        return render(
            request,
            "model_card.html",
            {"session": gate, "card": state.model_card, "local": local},
        )

    return router

"""``GET /healthz``: liveness plus a database round trip, for load balancers and the CLI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Health check")
def healthz(request: Request) -> JSONResponse:
    body: dict[str, Any] = {"status": "ok"}
    try:
        with request.app.state.cds.session_factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means "not ready", never a 500 page
        body = {"status": "unavailable", "database": type(exc).__name__}
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)

"""``GET /cds-services``: the discovery document (public: it carries no patient data)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["discovery"])


@router.get("/cds-services", summary="CDS Hooks discovery")
def discovery(request: Request) -> dict[str, Any]:
    services = request.app.state.cds.services.values()
    return {"services": [service.definition.to_json() for service in services]}

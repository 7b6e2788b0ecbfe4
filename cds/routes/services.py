"""``POST /cds-services/{service_id}``: call a CDS service.

The body is read raw and parsed after the client is authenticated, so an unauthenticated caller learns
nothing from validation errors; its schema is still published in OpenAPI for clients and fuzzers.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from cds.cards import CdsResponse
from cds.hook_pipeline import call_service
from cds.hook_request import HookRequest
from cds.openapi_body import inline_body_schema
from cds.operation_outcome import OperationOutcome

router = APIRouter(tags=["services"])
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CdsResponse},
    **{status: {"model": OperationOutcome} for status in (400, 401, 403, 404, 412)},
}


@router.post(
    "/cds-services/{service_id}",
    summary="Call a CDS service",
    response_class=JSONResponse,
    responses=RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_body_schema(HookRequest)}},
        }
    },
)
async def call(
    service_id: str, request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    # Already the spec's wire form (no nulls); returned as is rather than re-validated, and encoded
    # by orjson (UTF-8, compact, as JSONResponse would write it, at a tenth of the cost).
    body = await call_service(
        request.app.state.cds, service_id, request.url.path, authorization, await request.body()
    )
    return Response(orjson.dumps(body), media_type="application/json")

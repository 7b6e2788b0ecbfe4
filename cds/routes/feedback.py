"""``POST /cds-services/{service_id}/feedback``: clinicians' accept / override of our cards."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Request
from pydantic import ValidationError

from cds.client_auth.authenticate import authenticate
from cds.feedback import FeedbackRequest, RecordedFeedback, record_feedback
from cds.hook_audit import actor_for, patient_ref_for
from cds.hook_pipeline import validation_message
from cds.openapi_body import inline_body_schema
from cds.operation_outcome import CdsError, OperationOutcome
from cds.runtime import CdsRuntime

router = APIRouter(tags=["feedback"])


@router.post(
    "/cds-services/{service_id}/feedback",
    summary="Feedback on cards",
    responses={status: {"model": OperationOutcome} for status in (400, 401, 403, 404)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_body_schema(FeedbackRequest)}},
        }
    },
)
async def feedback(
    service_id: str, request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    runtime: CdsRuntime = request.app.state.cds
    started = time.perf_counter()
    if service_id not in runtime.services:
        raise CdsError(404, "not-found", f"no CDS service with id {service_id!r}")
    client = await authenticate(runtime.verifier, authorization, runtime.audience(request.url.path))
    raw = await request.body()
    try:
        parsed = FeedbackRequest.model_validate(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        detail = (
            validation_message(exc) if isinstance(exc, ValidationError) else "request body is not valid JSON"
        )
        raise CdsError(400, "invalid", detail) from exc

    def store() -> list[RecordedFeedback]:
        with runtime.session_factory() as session:
            recorded = record_feedback(
                session, service_id=service_id, items=parsed.feedback, received_at=datetime.now(UTC)
            )
        for item in recorded:
            runtime.ledger.append(
                "cds.feedback",
                actor_for(client.iss if client else None),
                {
                    "service": service_id,
                    "card": item.card_uuid,
                    "outcome": item.outcome,
                    "reportId": item.report_id,
                    "overrideReason": item.reason_code,
                    "userComment": item.has_comment,
                    "acceptedSuggestions": list(item.accepted),
                    "latencyMs": round((time.perf_counter() - started) * 1000, 2),
                },
                patient_ref=patient_ref_for(item.patient_id),
            )
        return recorded

    recorded = await to_thread.run_sync(store)
    return {"received": len(recorded)}

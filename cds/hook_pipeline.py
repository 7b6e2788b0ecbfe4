"""One CDS service call from request to response (ARCHITECTURE "The path of one hook call").

Service lookup (404) -> client JWT (401/403) -> body and context validation (400) -> prefetch (412 when
it cannot be completed) -> cards -> stored cards + audit entry -> response. Every outcome, refusals
included, is one ``cds.hook`` audit entry; nothing on this path waits for a GPU.

Writes go through the runtime's group-commit writer (``cds.group_commit``): a successful call submits
its token's ``jti`` claim, its card rows and its audit entry once, and is answered after they have
committed together with other calls' writes. The claim is settled earlier only where it must be: before
a prefetch fetch (a replay never reaches the EHR's FHIR server) and on every refusal (a replayed token is
refused as a replay; any other verified token is spent).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from pydantic import BaseModel, ValidationError

from audit import EntryDraft
from cds.cards import CdsResponse
from cds.client_auth.authenticate import authenticate_unclaimed, replay_refusal
from cds.client_auth.jti_replay import JtiClaim
from cds.client_auth.verify import REPLAY
from cds.hook_audit import actor_for, patient_ref_for
from cds.hook_call import HookCall, HookOutcome
from cds.hook_request import HookRequest
from cds.hook_rows import CardRow
from cds.operation_outcome import CdsError
from cds.runtime import CdsRuntime
from cds.service_catalog import RegisteredService

log = logging.getLogger(__name__)


def validation_message(exc: ValidationError, prefix: str = "") -> str:
    """Field paths and messages only: pydantic's ``input`` echo could carry patient data."""
    problems = [
        f"{prefix}{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" if error["loc"] else error["msg"]
        for error in exc.errors(include_input=False, include_url=False)
    ]
    return "; ".join(problems[:5])


def parse_hook_request(raw: bytes) -> HookRequest:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise CdsError(400, "structure", "request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise CdsError(400, "structure", "request body must be a JSON object")
    try:
        return HookRequest.model_validate(data)
    except ValidationError as exc:
        raise CdsError(400, "required", validation_message(exc)) from exc


def validate_context(service: RegisteredService, request: HookRequest) -> BaseModel:
    if request.hook != service.definition.hook:
        raise CdsError(
            400,
            "not-supported",
            f"service {service.definition.id} answers hook {service.definition.hook!r}, not {request.hook!r}",
        )
    try:
        return service.context_model.model_validate(request.context)
    except ValidationError as exc:
        raise CdsError(400, "required", validation_message(exc, "context.")) from exc


class _TokenClaim:
    """The call's ``jti`` claim, settled once: with the call's other writes, or earlier when needed.

    Earlier means before anything with an effect outside Veritrace (a FHIR fetch) and on every
    refusal, so a replayed token is refused as a replay whatever else is wrong with the call, and a
    token that reached signature verification is spent, as if it had been claimed first.
    """

    def __init__(self, runtime: CdsRuntime, claim: JtiClaim | None) -> None:
        self._runtime = runtime
        self.pending = claim
        self.replayed = False

    async def settle(self) -> None:
        """Hold the claim now; raises the replay refusal when an earlier token holds it."""
        claim, self.pending = self.pending, None
        if claim is not None and not await self._runtime.commits.claim_jti(claim.key, claim.expires_at):
            self.replayed = True
            raise replay_refusal()


async def call_service(
    runtime: CdsRuntime, service_id: str, path: str, authorization: str | None, raw: bytes
) -> dict[str, Any]:
    started = time.perf_counter()
    audit: dict[str, Any] = {"service": service_id}
    refused_at_auth: dict[str, Any] = audit
    issuer: str | None = None
    patient_ref: str | None = None
    token = _TokenClaim(runtime, None)
    try:
        service = runtime.services.get(service_id)
        if service is None:
            raise CdsError(404, "not-found", f"no CDS service with id {service_id!r}")
        client, claim = await authenticate_unclaimed(runtime.verifier, authorization, runtime.audience(path))
        issuer = client.iss if client else None
        token = _TokenClaim(runtime, claim)
        refused_at_auth = dict(audit)  # a replay's entry: what was known when authentication refused it
        request = parse_hook_request(raw)
        audit.update(hook=request.hook, hookInstance=request.hookInstance)
        context = validate_context(service, request)
        patient_ref = patient_ref_for(getattr(context, "patientId", None))
        prefetch = await runtime.fetcher.resolve(
            request, service.definition.prefetch, before_fetch=token.settle
        )
        audit["prefetch"] = {"fetched": sorted(prefetch.fetched), "unavailable": prefetch.unavailable}
        call = HookCall(
            service_id=service_id,
            request=request,
            context=context,
            prefetch=prefetch,
            session_factory=runtime.session_factory,
            public_base_url=runtime.public_base_url,
            now=datetime.now(UTC),
            smart_viewer=runtime.smart_viewer,
        )
        response, outcome = await to_thread.run_sync(_build_cards, service, call)
        rows = _card_rows(call, response, outcome)
    except Exception as exc:
        # Settle the claim first: a replayed token is refused as a replay, whatever else went wrong,
        # and any other token that got this far is spent, unexpected failures (500) included.
        refusal = exc if isinstance(exc, CdsError) else None
        if not token.replayed:
            try:
                await token.settle()
            except CdsError as replay:
                refusal = replay
        if refusal is None:
            raise
        if token.replayed:
            audit, patient_ref = refused_at_auth, None
        await _refuse(runtime, refusal, audit, issuer, patient_ref, started)
        if refusal is exc:
            raise
        raise refusal from None
    audit.update(status=200, cards=len(outcome.cards), cardUuids=[c.uuid for c in outcome.cards])
    if outcome.skipped:
        audit["skipped"] = outcome.skipped
        log.warning("cds call degraded: service=%s reasons=%s", service_id, outcome.skipped)
    # One submission for the whole call: claim, cards and audit entry commit together with other
    # calls' writes, and the call is answered only once they have.
    replay_entry = None
    if token.pending is not None:
        refused_at_auth.update(status=401, reason=REPLAY)
        replay_entry = _audit_entry(refused_at_auth, issuer, None, started)
    pending = token.pending
    held = await runtime.commits.commit_call(
        claim=None if pending is None else (pending.key, pending.expires_at),
        cards=rows,
        audit=_audit_entry(audit, issuer, patient_ref, started),
        audit_if_replay=replay_entry,
    )
    if not held:
        log.info("cds call refused: service=%s status=401 reason=%s", service_id, REPLAY)
        raise replay_refusal()
    return response


async def _refuse(
    runtime: CdsRuntime,
    refusal: CdsError,
    audit: dict[str, Any],
    issuer: str | None,
    patient_ref: str | None,
    started: float,
) -> None:
    audit.update(status=refusal.status, reason=refusal.diagnostics)
    await runtime.commits.record(audit=_audit_entry(audit, issuer, patient_ref, started))
    log.info(
        "cds call refused: service=%s status=%s reason=%s",
        audit["service"],
        refusal.status,
        refusal.diagnostics,
    )


def _build_cards(service: RegisteredService, call: HookCall) -> tuple[dict[str, Any], HookOutcome]:
    outcome = service.build_cards(call)
    return CdsResponse(cards=tuple(outcome.cards)).to_json(), outcome


def _card_rows(call: HookCall, response: dict[str, Any], outcome: HookOutcome) -> list[CardRow]:
    patient_id = getattr(call.context, "patientId", None)
    return [
        CardRow(
            uuid=card["uuid"],
            service_id=call.service_id,
            hook_instance=call.request.hookInstance,
            patient_id=patient_id,
            report_id=outcome.card_reports.get(card["uuid"]),
            payload=card,
        )
        for card in response["cards"]
    ]


def _audit_entry(
    payload: dict[str, Any], issuer: str | None, patient_ref: str | None, started: float
) -> EntryDraft:
    payload["issuer"] = issuer
    payload["latencyMs"] = round((time.perf_counter() - started) * 1000, 2)
    return EntryDraft(kind="cds.hook", actor=actor_for(issuer), payload=payload, patient_ref=patient_ref)

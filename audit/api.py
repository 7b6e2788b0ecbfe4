"""HTTP API of the ledger: checkpoint, entries with their inclusion proofs, consistency, public keys.

Errors are FHIR OperationOutcome JSON: 404 for an index the log does not hold, 400 for a bad range.
The composition root mounts the router behind its own authentication: entries carry patient references.
"""

import base64
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, params
from fastapi.responses import JSONResponse

from audit.ledger import BadRange, Ledger, UnknownEntry
from audit.signing import NoSigningKey

FHIR_JSON = "application/fhir+json"


def operation_outcome(status: int, code: str, diagnostics: str) -> JSONResponse:
    """A FHIR R4 OperationOutcome with one error issue (``code`` from the IssueType value set)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def build_audit_router(
    get_ledger: Callable[[], Ledger], *, entry_dependencies: Sequence[params.Depends] = ()
) -> APIRouter:
    """``entry_dependencies`` guard the routes that return entries (they carry patient references);
    checkpoints, consistency proofs and public keys stay public so anyone can check the log."""
    router = APIRouter(prefix="/audit", tags=["audit"])
    LedgerDep = Annotated[Ledger, Depends(get_ledger)]

    @router.get("/checkpoint")
    def latest_checkpoint(ledger: LedgerDep) -> Any:
        """The newest signed checkpoint: origin, size, root and the signed note."""
        checkpoint = ledger.latest_checkpoint()
        if checkpoint is None:
            return operation_outcome(404, "not-found", "no checkpoint has been signed yet")
        return _checkpoint_json(checkpoint)

    @router.get("/entries/{index}", dependencies=list(entry_dependencies))
    def entry(index: int, ledger: LedgerDep) -> Any:
        """One entry and its inclusion proof against the latest checkpoint (null if not yet covered)."""
        if index < 0:
            return operation_outcome(400, "invalid", f"index must be >= 0, got {index}")
        try:
            stored = ledger.entry(index)
        except UnknownEntry:
            return operation_outcome(404, "not-found", f"the ledger has no entry {index}")
        checkpoint = ledger.latest_checkpoint()
        proof = None
        if checkpoint is not None and index < checkpoint.size:
            proof = ledger.inclusion_proof(index, checkpoint.size).model_dump(mode="json")
        return {
            "entry": stored.model_dump(mode="json"),
            "checkpoint": None if checkpoint is None else _checkpoint_json(checkpoint),
            "inclusion_proof": proof,
        }

    @router.get("/consistency")
    def consistency(
        ledger: LedgerDep,
        first: Annotated[int, Query(alias="from")],
        second: Annotated[int, Query(alias="to")],
    ) -> Any:
        """Proof that the tree of ``to`` entries extends the tree of ``from`` entries."""
        try:
            return ledger.consistency_proof(first, second).model_dump(mode="json")
        except BadRange as exc:
            return operation_outcome(400, "invalid", str(exc))

    @router.get("/public-key")
    def public_key(ledger: LedgerDep) -> Any:
        """The current verifier key and every earlier one, in C2SP signed-note vkey form."""
        try:
            current = ledger.current_verifier()
        except NoSigningKey:
            return operation_outcome(404, "not-found", "the ledger has no signing key yet")
        return {
            "origin": ledger.config.origin,
            "algorithm": "Ed25519",
            "key_id": current.key_id.hex(),
            "public_key": base64.b64encode(current.public_key).decode(),
            "vkey": current.vkey,
            "all_vkeys": sorted(v.vkey for v in ledger.verifiers().values()),
        }

    return router


def _checkpoint_json(checkpoint: Any) -> dict[str, Any]:
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root_hash": checkpoint.root_hash.hex(),
        "timestamp_ms": checkpoint.timestamp_ms,
        "key_id": checkpoint.key_id,
        "note": checkpoint.note,
    }

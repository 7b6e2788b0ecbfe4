"""Is the draft's ``report.drafted`` entry provably in the audit ledger? One line for the clinician.

The entry is found by kind and study, then its RFC 9162 inclusion proof is computed against the newest
signed checkpoint and verified here, so the page says what was checked rather than what was stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from audit import Ledger, ProofError
from audit.checkpoint_note import CheckpointError, open_checkpoint
from audit.proofs import verify_inclusion
from audit.tables import entries

ProofState = Literal["verified", "pending-checkpoint", "failed", "missing"]


@dataclass(frozen=True)
class LedgerProofStatus:
    state: ProofState
    message: str
    entry_index: int | None = None
    checkpoint_size: int | None = None


def _drafted_entry_index(ledger: Ledger, *, report_id: str, study_uid: str) -> int | None:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(entries.c.leaf_index, entries.c.payload)
            .where(entries.c.kind == "report.drafted", entries.c.study_uid == study_uid)
            .order_by(entries.c.leaf_index.desc())
        ).all()
    for index, payload in rows:
        if payload and json.loads(payload).get("report_id") == report_id:
            return int(index)
    return None


def draft_proof_status(ledger: Ledger, *, report_id: str, study_uid: str) -> LedgerProofStatus:
    """Verify the inclusion of the draft's ledger entry in the newest correctly signed checkpoint."""
    index = _drafted_entry_index(ledger, report_id=report_id, study_uid=study_uid)
    if index is None:
        return LedgerProofStatus("missing", "No ledger entry records this draft.")
    checkpoint = ledger.trusted_checkpoint()
    if checkpoint is None:
        latest = ledger.latest_checkpoint()
        if latest is not None:
            try:
                checkpoint = open_checkpoint(latest.note, ledger.verifiers(), ledger.config.origin)
            except CheckpointError:
                return LedgerProofStatus(
                    "failed", "The newest checkpoint's signature does not verify.", index, latest.size
                )
    if checkpoint is None or checkpoint.size <= index:
        return LedgerProofStatus(
            "pending-checkpoint",
            f"Recorded as ledger entry {index}; not yet covered by a signed checkpoint.",
            index,
            checkpoint.size if checkpoint else None,
        )
    proof = ledger.inclusion_proof(index, checkpoint.size)
    try:
        verify_inclusion(index, checkpoint.size, proof.leaf_hash, proof.path, checkpoint.root_hash)
    except ProofError:
        return LedgerProofStatus(
            "failed",
            f"Ledger entry {index} does NOT verify against the signed checkpoint.",
            index,
            checkpoint.size,
        )
    return LedgerProofStatus(
        "verified",
        f"Ledger entry {index} is included in the signed checkpoint of {checkpoint.size} entries "
        f"(inclusion proof of {len(proof.path)} hashes verified).",
        index,
        checkpoint.size,
    )

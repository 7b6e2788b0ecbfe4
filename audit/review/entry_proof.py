"""One ledger entry with everything a browser needs to check its inclusion itself.

The browser gets the exact bytes that were hashed into the tree (re-encoded from the stored columns, as
the verifier does), the audit path and the signed checkpoint. It hashes the bytes to the leaf, walks the
path to a root and compares that with the checkpoint's root; the server does the same here and also
checks the checkpoint's Ed25519 signature, so a reviewer sees two independent verdicts side by side.
"""

from __future__ import annotations

import base64
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel

from audit.checkpoint_note import CheckpointError, open_checkpoint
from audit.entry import encode_entry
from audit.hashing import hash_leaf
from audit.ledger import Ledger, UnknownEntry
from audit.proofs import ProofError
from audit.tables import entries


class ProofPath(BaseModel):
    index: int
    size: int
    leaf_hash: str
    root_hash: str
    path: list[str]


class CheckpointView(BaseModel):
    origin: str
    size: int
    root_hash: str
    timestamp_ms: int
    key_id: str
    note: str


class EntryProof(BaseModel):
    index: int
    kind: str
    actor: str
    recorded_at: str
    patient_ref: str | None
    entry_b64: str
    """The canonical entry bytes that the leaf hash covers, base64."""
    stored_leaf_hash: str
    checkpoint: CheckpointView | None
    proof: ProofPath | None
    server_verdict: Literal["verified", "not-yet-checkpointed", "failed"]
    server_problem: str | None = None


def latest_checkpoint_view(ledger: Ledger) -> CheckpointView | None:
    checkpoint = ledger.latest_checkpoint()
    if checkpoint is None:
        return None
    return CheckpointView(
        origin=checkpoint.origin,
        size=checkpoint.size,
        root_hash=checkpoint.root_hash.hex(),
        timestamp_ms=checkpoint.timestamp_ms,
        key_id=str(checkpoint.key_id),
        note=checkpoint.note,
    )


def entry_proof(ledger: Ledger, index: int) -> EntryProof:
    """Raises UnknownEntry when the ledger has no entry ``index``."""
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(entries).where(entries.c.leaf_index == index)).first()
    if row is None:
        raise UnknownEntry(f"no entry at index {index}")
    encoded = encode_entry(
        index=int(row.leaf_index),
        kind=row.kind,
        actor=row.actor,
        patient_ref=row.patient_ref,
        study_uid=row.study_uid,
        recorded_at=row.recorded_at,
        payload_digest=row.payload_digest,
        payload_json=row.payload,
    )
    stored_leaf = bytes(row.leaf_hash)
    checkpoint = ledger.latest_checkpoint()
    result = EntryProof(
        index=index,
        kind=row.kind,
        actor=row.actor,
        recorded_at=row.recorded_at,
        patient_ref=row.patient_ref,
        entry_b64=base64.b64encode(encoded).decode(),
        stored_leaf_hash=stored_leaf.hex(),
        checkpoint=latest_checkpoint_view(ledger),
        proof=None,
        server_verdict="not-yet-checkpointed",
    )
    if checkpoint is None or index >= checkpoint.size:
        return result
    proof = ledger.inclusion_proof(index, checkpoint.size)
    result.proof = ProofPath(
        index=proof.index,
        size=proof.size,
        leaf_hash=proof.leaf_hash.hex(),
        root_hash=proof.root_hash.hex(),
        path=[p.hex() for p in proof.path],
    )
    problem = None
    try:
        if hash_leaf(encoded) != stored_leaf:
            problem = "the entry's bytes do not hash to its stored leaf hash"
        else:
            proof.verify()
            if proof.root_hash != checkpoint.root_hash:
                problem = "the proof's root is not the checkpoint's root"
            else:
                open_checkpoint(checkpoint.note, ledger.verifiers(), ledger.config.origin)
    except ProofError as exc:
        problem = f"inclusion proof does not verify: {exc}"
    except CheckpointError as exc:
        problem = f"checkpoint signature does not verify: {type(exc).__name__}"
    result.server_verdict = "failed" if problem else "verified"
    result.server_problem = problem
    return result

"""Veritrace's append-only, verifiable audit ledger (RFC 9162 Merkle log with signed checkpoints).

The rest of Veritrace writes through ``Ledger.append``; nothing here imports the rest of Veritrace.
"""

from audit.checkpoint_note import Checkpoint
from audit.config import LedgerConfig
from audit.entry import AppendedEntry, EntryDraft, LedgerEntry
from audit.ledger import BadRange, Ledger, UnknownEntry
from audit.proof_types import ConsistencyProof, InclusionProof
from audit.proofs import ProofError, RootMismatch
from audit.schema import upgrade_ledger_schema
from audit.verification import VerificationReport

__all__ = [
    "AppendedEntry",
    "BadRange",
    "Checkpoint",
    "ConsistencyProof",
    "EntryDraft",
    "InclusionProof",
    "Ledger",
    "LedgerConfig",
    "LedgerEntry",
    "ProofError",
    "RootMismatch",
    "UnknownEntry",
    "VerificationReport",
    "upgrade_ledger_schema",
]

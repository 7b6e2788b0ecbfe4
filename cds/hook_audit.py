"""Audit entries for every CDS call: who called which hook, what came back, how long it took.

Payloads carry identifiers of the call (hook, hookInstance, service, issuer), counts, card uuids and
reasons we wrote ourselves; the patient appears only as the entry's ``patient_ref``. Prefetch contents,
context resources and free-text user comments never enter the ledger.
"""

from __future__ import annotations

ANONYMOUS_ACTOR = "cds-client:unauthenticated"


def actor_for(issuer: str | None) -> str:
    return f"cds-client:{issuer}" if issuer else ANONYMOUS_ACTOR


def patient_ref_for(patient_id: object) -> str | None:
    return f"Patient/{patient_id}" if isinstance(patient_id, str) and patient_id else None

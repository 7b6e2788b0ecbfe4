"""Audit entries for every CDS call: who called which hook, what came back, how long it took.

Payloads carry identifiers of the call (hook, hookInstance, service, issuer), counts, card uuids and
reasons we wrote ourselves; the patient appears only as the entry's ``patient_ref``. Prefetch contents,
context resources and free-text user comments never enter the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

ANONYMOUS_ACTOR = "cds-client:unauthenticated"


class AuditLedger(Protocol):
    """The part of ``audit.Ledger`` the CDS service uses."""

    def append(
        self,
        kind: str,
        actor: str,
        payload: Mapping[str, Any],
        *,
        patient_ref: str | None = None,
        study_uid: str | None = None,
    ) -> object: ...


def actor_for(issuer: str | None) -> str:
    return f"cds-client:{issuer}" if issuer else ANONYMOUS_ACTOR


def patient_ref_for(patient_id: object) -> str | None:
    return f"Patient/{patient_id}" if isinstance(patient_id, str) and patient_id else None

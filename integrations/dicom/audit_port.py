"""The slice of the audit ledger the DICOM gateway writes to.

`audit.Ledger` satisfies it; the gateway depends on this protocol rather than the class so that the
composition root decides which ledger (and which database) receives DICOM events.
"""

from __future__ import annotations

from typing import Any, Protocol


class AuditLedger(Protocol):
    def append(
        self,
        kind: str,
        actor: str,
        payload: dict[str, Any],
        *,
        patient_ref: str | None = None,
        study_uid: str | None = None,
    ) -> Any: ...

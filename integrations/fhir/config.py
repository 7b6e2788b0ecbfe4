"""Settings the FHIR side of Veritrace needs; ``cds/settings.py`` composes them into ``Settings``."""

from __future__ import annotations

from pydantic import BaseModel, Field

from integrations.fhir.smart_backend import SmartBackendConfig


class FhirConfig(BaseModel):
    """Where the EHR's FHIR server is and how to talk to it.

    ``base_url`` is optional because a deployment without an EHR connection (PACS-only) is valid:
    the worker then analyses images without patient context and writes nothing back.
    """

    base_url: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    bearer_token: str | None = None
    # SMART Backend Services (client credentials + signed JWT assertion) for background access: hook
    # tokens are short-lived, so the worker holds its own registration at the EHR.
    smart: SmartBackendConfig | None = None

"""Service definitions as published by ``GET /cds-services`` (spec §Discovery).

A definition is also what the request path checks against: the hook a service answers, the context
model that hook requires, and the prefetch templates whose keys the resolver fills.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ServiceDefinition(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    hook: str
    title: str
    description: str
    prefetch: dict[str, str] = Field(default_factory=dict)
    usageRequirements: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True)
        if not body["prefetch"]:
            del body["prefetch"]  # spec: optional members are omitted, never empty
        return body


USAGE_REQUIREMENTS = (
    "Every call carries a CDS client JWT (ES384 or RS384; ES256/RS256 accepted) from an issuer registered "
    "in Veritrace's trusted-issuers file. Send the prefetch listed here, or fhirServer with "
    "fhirAuthorization granting patient-level read of the listed resource types; otherwise the service "
    "answers 412."
)

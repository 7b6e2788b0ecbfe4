"""The body of a CDS Hooks service call (spec §"Calling a CDS Service") and each hook's context.

Context models are per hook (CDS Hooks library: patient-view 1.0, order-select 1.0, order-sign 1.1,
encounter-discharge 1.0); a missing required field is a 400 naming the field, never a 500 later.
Extra members are allowed: the spec reserves ``extension`` and EHRs add their own context fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _draft_orders_bundle(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") != "Bundle":
        raise ValueError("draftOrders must be a FHIR Bundle")
    return value


class FhirAuthorization(BaseModel):
    """The bearer token an EHR hands us for its FHIR server (spec §"Passing the Access Token")."""

    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: Literal["Bearer", "bearer"] = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=64)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("fhirServer must be an http(s) URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirServer is required when fhirAuthorization is provided")
        return self


class PatientViewContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1, max_length=64)
    encounterId: str | None = None


class OrderSelectContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1, max_length=64)
    encounterId: str | None = None
    selections: list[str] = Field(min_length=1)
    draftOrders: dict[str, Any]

    @field_validator("draftOrders")
    @classmethod
    def _bundle(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _draft_orders_bundle(value)


class OrderSignContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1, max_length=64)
    encounterId: str | None = None
    draftOrders: dict[str, Any]

    @field_validator("draftOrders")
    @classmethod
    def _bundle(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _draft_orders_bundle(value)


class EncounterDischargeContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1, max_length=64)
    encounterId: str = Field(min_length=1)

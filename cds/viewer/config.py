"""What the viewer needs to know to act as a SMART App Launch 2 client of the hospital's EHR.

The viewer is a confidential client (its secret never leaves the server), registered with the EHR's
authorization server under ``client_id`` with ``{public_base_url}/viewer/callback`` as redirect URI.
Only FHIR servers listed in ``allowed_issuers`` may launch it: an ``iss`` is where the viewer sends
the access token, so an unlisted one is refused before anything is fetched from it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# SMART v2 scopes (read + search) for everything the page shows; launch context and the user's identity.
DEFAULT_SCOPES: tuple[str, ...] = (
    "launch",
    "openid",
    "fhirUser",
    "patient/Patient.rs",
    "patient/DiagnosticReport.rs",
    "patient/Observation.rs",
    "patient/MedicationRequest.rs",
    "patient/Condition.rs",
    "patient/AllergyIntolerance.rs",
    "patient/Procedure.rs",
    "patient/ImagingStudy.rs",
)
STANDALONE_EXTRA_SCOPES: tuple[str, ...] = ("launch/patient",)


def _origin(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute http(s) URL, got {value!r}")
    return value.rstrip("/")


class ViewerConfig(BaseModel):
    """Settings of the draft viewer; ``frame_ancestors`` are the EHR origins allowed to embed it."""

    model_config = ConfigDict(frozen=True)

    public_base_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    allowed_issuers: tuple[str, ...] = Field(min_length=1)
    frame_ancestors: tuple[str, ...] = ()
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    launch_ttl_s: float = Field(default=600.0, gt=0)
    session_ttl_s: float = Field(default=3600.0, gt=0)
    http_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("public_base_url")
    @classmethod
    def _public(cls, value: str) -> str:
        return _origin(value, "public_base_url")

    @field_validator("allowed_issuers")
    @classmethod
    def _issuers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_origin(v, "allowed_issuers entry") for v in value)

    @field_validator("frame_ancestors")
    @classmethod
    def _ancestors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(
                    f"frame_ancestors entries must be origins like https://ehr.example, got {origin!r}"
                )
        return tuple(v.rstrip("/") for v in value)

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_base_url}/viewer/callback"

"""The hospital-edited allow-list of CDS clients (``VERITRACE_CDS_ISSUERS_FILE``).

The file is one JSON object mapping each trusted ``iss`` to where its signing keys come from::

    {
      "https://ehr.example.org/": {
        "jku": ["https://ehr.example.org/.well-known/jwks.json"],
        "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", "x": "...", "y": "..."}]}
      }
    }

``jku`` lists the only JWK Set URLs a token from that issuer may name in its header (spec: "maintain an
allowlist of the iss and jku fields"); when a token names none, the keys are looked up in the inline
``jwks`` and then at the listed URLs (the spec's "out-of-band" JWK Set). Each issuer needs at least one
of the two. A malformed file fails at start-up, naming the issuer and the problem, never at the first
hook call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)


class TrustedIssuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    jku: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    description: str | None = Field(default=None, description="Free text for the people editing the file.")

    @field_validator("jku")
    @classmethod
    def _https_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"jku entries must be http(s) URLs, got {url!r}")
        return value

    @field_validator("jwks")
    @classmethod
    def _jwk_set(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        keys = value.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError("jwks must be a JWK Set: an object with a non-empty 'keys' array")
        for key in keys:
            if not isinstance(key, dict) or "kty" not in key or "kid" not in key:
                raise ValueError("every inline JWK needs 'kty' and 'kid'")
            if "d" in key or key.get("kty") == "oct":
                raise ValueError(f"inline JWK {key.get('kid')!r} is a private or symmetric key")
        return value

    @model_validator(mode="after")
    def _has_keys(self) -> TrustedIssuer:
        if not self.jku and self.jwks is None:
            raise ValueError("an issuer needs 'jku' URLs, an inline 'jwks', or both")
        return self


class TrustedIssuers(RootModel[dict[str, TrustedIssuer]]):
    """``iss`` -> how to find its keys."""

    def get(self, iss: str) -> TrustedIssuer | None:
        return self.root.get(iss)

    @classmethod
    def load(cls, path: Path) -> TrustedIssuers:
        """Read and validate the file; raises ``ValueError`` naming the file and the problem."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read CDS issuers file {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"CDS issuers file {path} is not JSON (line {exc.lineno})") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"CDS issuers file {path} is invalid: {exc}") from exc

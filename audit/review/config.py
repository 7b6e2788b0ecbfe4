"""Settings the review app needs; the composition root (``cds``) fills them from ``VERITRACE_*``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class OidcConfig(BaseModel):
    """The hospital IdP: an OpenID Connect provider used with authorization code + PKCE (S256)."""

    model_config = ConfigDict(frozen=True)

    issuer: str
    """Its discovery document is read from ``<issuer>/.well-known/openid-configuration``."""
    client_id: str = Field(min_length=1)
    client_secret: str | None = None
    """None for a public client (PKCE only); else sent with HTTP Basic (client_secret_basic)."""
    redirect_uri: str
    """Must end in ``/review/auth/callback`` on the public address of the API."""
    roles_claim: str = "roles"
    """ID token (or UserInfo) claim holding the roles: a list, or one space-separated string."""
    scopes: tuple[str, ...] = ("openid", "profile", "roles")
    timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("issuer", "redirect_uri")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
            raise ValueError("must be an absolute http(s) URL without a fragment")
        return value


class ReviewConfig(BaseModel):
    """How reviewers sign in and how long a session lasts. At least one sign-in method is required."""

    model_config = ConfigDict(frozen=True)

    oidc: OidcConfig | None = None
    local_users_file: Path | None = None
    """JSON file of local users (embedded default); see ``local_users``."""
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    secure_cookies: bool = True
    """Mark cookies Secure. Only a plain-HTTP test or demo on localhost sets this to False."""
    model_card_file: Path | None = None
    """HTI-1 source attributes of the deployed model (JSON, see ``model_card``); shown on the model card."""
    spool_thumbnails: bool = True
    """Show thumbnails of the frames the model looked at (read from the spool by the trace source)."""
    login_key: SecretStr | None = Field(default=None, repr=False)
    """AES-256 key (base64url of 32 bytes) sealing the PKCE verifier of pending OIDC sign-ins in the
    database (``login_sealing``); API replicas must share it. None: a key file made on first use (0600)
    as ``review-login.key`` in the ledger's key directory. Only read when ``oidc`` is set."""

"""Authorization code → access token at the EHR's token endpoint (SMART App Launch 2, §App Launch).

The viewer authenticates as a confidential client (``client_secret_basic``) and proves possession of
the PKCE verifier. The response must carry a ``patient`` (the launch context); without it the viewer
would not know whose record the token opens, so it refuses.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cds.viewer.errors import ViewerRefusal


class TokenResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int | None = None
    scope: str = ""
    patient: str = Field(min_length=1, max_length=64)
    encounter: str | None = None
    appContext: str | None = None
    id_token: str | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError(f"token_type must be Bearer, got {value!r}")
        return value

    def app_context(self) -> dict[str, Any]:
        """``appContext`` parsed as the JSON object the card put there; {} when absent or not JSON."""
        if not self.appContext:
            return {}
        try:
            value = json.loads(self.appContext)
        except (ValueError, RecursionError):  # RecursionError: nesting too deep
            return {}
        return value if isinstance(value, dict) else {}


async def exchange_code(
    http: httpx.AsyncClient,
    *,
    token_endpoint: str,
    code: str,
    code_verifier: str,
    redirect_uri: str,
    client_id: str,
    client_secret: str,
) -> TokenResponse:
    """Redeem ``code``; raises ``ViewerRefusal`` (401 refused by the EHR, 502 unusable answer)."""
    try:
        response = await http.post(
            token_endpoint,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
            auth=(client_id, client_secret),
            headers={"Accept": "application/json"},
        )
    except httpx.HTTPError as exc:
        raise ViewerRefusal(502, "The EHR could not be reached", type(exc).__name__) from exc
    if response.status_code != 200:
        error = _oauth_error(response)
        raise ViewerRefusal(401, "The EHR refused the sign-in", f"token endpoint answered {error}.")
    try:
        return TokenResponse.model_validate_json(response.content)
    except ValidationError as exc:
        missing = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
        raise ViewerRefusal(
            502, "The EHR's token response is unusable", f"problem with: {', '.join(missing)}."
        ) from exc


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    code = body.get("error") if isinstance(body, dict) else None
    return (
        f"HTTP {response.status_code} ({code})" if isinstance(code, str) else f"HTTP {response.status_code}"
    )

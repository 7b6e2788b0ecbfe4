"""SMART App Launch 2 discovery: ``{iss}/.well-known/smart-configuration``.

The document names the authorization and token endpoints the launch will use. It must offer
authorization code with PKCE S256; a server that does not is refused rather than launched without it.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from cds.viewer.errors import ViewerRefusal


class SmartConfiguration(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None = None
    code_challenge_methods_supported: list[str] = []
    capabilities: list[str] = []


async def discover(http: httpx.AsyncClient, iss: str) -> SmartConfiguration:
    """Fetch and check the SMART configuration of ``iss``; raises ``ViewerRefusal(502)`` when unusable."""
    url = f"{iss.rstrip('/')}/.well-known/smart-configuration"
    try:
        response = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise ViewerRefusal(
            502, "The EHR could not be reached", f"SMART discovery failed ({type(exc).__name__})."
        ) from exc
    if response.status_code != 200:
        raise ViewerRefusal(
            502, "The EHR's SMART configuration is unavailable", f"HTTP {response.status_code}."
        )
    try:
        config = SmartConfiguration.model_validate_json(response.content)
    except ValidationError as exc:
        raise ViewerRefusal(
            502, "The EHR's SMART configuration is invalid", "authorization or token endpoint missing."
        ) from exc
    if "S256" not in config.code_challenge_methods_supported:
        raise ViewerRefusal(
            502, "The EHR does not support PKCE", "code_challenge_methods_supported lacks S256."
        )
    return config

"""Who is using the viewer: ``fhirUser`` from the OpenID Connect ID token, signature checked.

The clinician's identity becomes the actor of the feedback's ledger entry, so it is only taken from an
ID token verified against the authorization server's published keys (issuer, audience, expiry).
"""

from __future__ import annotations

import jwt


def user_from_id_token(id_token: str, *, jwks_uri: str, issuer: str, client_id: str) -> str | None:
    """``fhirUser`` (else ``sub``) of a valid ID token; None when it does not verify. Blocking I/O."""
    try:
        key = jwt.PyJWKClient(jwks_uri, timeout=5).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=["RS256", "RS384", "ES256", "ES384"],
            audience=client_id,
            issuer=issuer,
        )
    except (jwt.PyJWTError, OSError):
        return None
    user = claims.get("fhirUser") or claims.get("sub")
    return str(user) if user else None

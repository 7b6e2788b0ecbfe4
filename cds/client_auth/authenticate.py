"""Turn the verifier's verdict into the HTTP answer the spec implies: 401 or 403 with an OperationOutcome."""

from __future__ import annotations

from cds.client_auth.verify import CdsClient, ClientTokenVerifier, InvalidClientToken, UntrustedClient
from cds.operation_outcome import CdsError


async def authenticate(
    verifier: ClientTokenVerifier | None, authorization: str | None, audience: str
) -> CdsClient | None:
    """The verified client, or None when verification is switched off (embedded demo only)."""
    if verifier is None:
        return None
    try:
        return await verifier.verify(authorization, audience)
    except InvalidClientToken as exc:
        raise CdsError(
            401, "login", str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from exc
    except UntrustedClient as exc:
        raise CdsError(403, "forbidden", str(exc)) from exc

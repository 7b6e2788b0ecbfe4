"""Turn the verifier's verdict into the HTTP answer the spec implies: 401 or 403 with an OperationOutcome."""

from __future__ import annotations

from cds.client_auth.jti_replay import JtiClaim
from cds.client_auth.verify import (
    REPLAY,
    CdsClient,
    ClientTokenVerifier,
    InvalidClientToken,
    UntrustedClient,
)
from cds.operation_outcome import CdsError

INVALID_TOKEN_HEADERS = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


async def authenticate(
    verifier: ClientTokenVerifier | None, authorization: str | None, audience: str
) -> CdsClient | None:
    """The verified client, or None when verification is switched off (embedded demo only)."""
    if verifier is None:
        return None
    try:
        return await verifier.verify(authorization, audience)
    except InvalidClientToken as exc:
        raise CdsError(401, "login", str(exc), headers=INVALID_TOKEN_HEADERS) from exc
    except UntrustedClient as exc:
        raise CdsError(403, "forbidden", str(exc)) from exc


async def authenticate_unclaimed(
    verifier: ClientTokenVerifier | None, authorization: str | None, audience: str
) -> tuple[CdsClient | None, JtiClaim | None]:
    """As ``authenticate``, leaving the replay check to the caller (see ``verify_unclaimed``)."""
    if verifier is None:
        return None, None
    try:
        return await verifier.verify_unclaimed(authorization, audience)
    except InvalidClientToken as exc:
        raise CdsError(401, "login", str(exc), headers=INVALID_TOKEN_HEADERS) from exc
    except UntrustedClient as exc:
        raise CdsError(403, "forbidden", str(exc)) from exc


def replay_refusal() -> CdsError:
    """The answer to a token whose ``jti`` is held by an earlier token (same as ``authenticate``'s)."""
    return CdsError(401, "login", REPLAY, headers=INVALID_TOKEN_HEADERS)

"""Machine clients with a configured bearer token: a PACS storing by STOW-RS, an auditor reading entries.

An empty token list refuses everyone: the secure default until an operator issues a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Header, HTTPException, status


def require_bearer_token(tokens: Sequence[str], purpose: str) -> Callable[[str | None], None]:
    """A dependency comparing the bearer token in constant time; the token never reaches a log."""
    expected = [token.encode() for token in tokens if token]

    def check(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bearer token required")
        if not any(hmac.compare_digest(presented.encode(), token) for token in expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"token not allowed to {purpose}")

    return check

"""PKCE (RFC 7636) with S256 only: SMART App Launch 2 forbids the ``plain`` method."""

from __future__ import annotations

import base64
import hashlib
import secrets


def new_verifier() -> str:
    """43 characters of base64url from 32 random bytes: the minimum length, full entropy."""
    return secrets.token_urlsafe(32)


def challenge_s256(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(code_verifier)))`` without padding (RFC 7636 §4.2)."""
    if not 43 <= len(verifier) <= 128:
        raise ValueError(f"a PKCE verifier has 43 to 128 characters, got {len(verifier)}")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

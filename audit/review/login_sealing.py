"""AES-256-GCM over the PKCE verifier of a pending OIDC sign-in, bound to the row that holds it.

Why: the verifier is what turns an intercepted authorization code into a reviewer session (RFC 7636).
It waits in ``audit_review_logins`` for up to ten minutes, so a database dump or backup taken then must
not carry it in the clear. It is stored as ``base64url(nonce (12 bytes) || ciphertext+tag)``, with the
SHA-256 of the row's other columns (state digest, OIDC nonce, return path, expiry) as associated data:
a sealed verifier copied into another row, or a row whose return path or expiry was edited, no longer
opens, and the callback is refused.

The key is the review app's own (``ReviewConfig.login_key``, base64url of 32 bytes; API replicas behind
one load balancer must share it), else a key file made on first use with mode 0600 beside the ledger's
signing key. The sealing itself is ``audit.sealed_secrets``, shared with the viewer; this module fixes
the review app's key name, error type and base64url text form, and what the associated data covers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path

from audit import sealed_secrets

LOGIN_KEY_FILE = "review-login.key"
"""File name of the generated key in the ledger's key directory."""
_KEY_NAME = "review login key"
_ROW_LABEL = "veritrace review pending login v1"


class LoginKeyError(ValueError):
    """The configured key or key file does not hold a usable key. Messages never quote the key."""


def row_digest(*, state_sha256: str, nonce: str, return_to: str, expires_at: float) -> bytes:
    """The associated data binding a sealed verifier to every other column of its row."""
    encoded = json.dumps([_ROW_LABEL, state_sha256, nonce, return_to, expires_at], separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).digest()


class LoginSealer:
    """Seals and opens PKCE verifiers with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        self._sealer = sealed_secrets.AesGcmSealer(key, key_name=_KEY_NAME, error=LoginKeyError)

    @classmethod
    def from_key_or_file(cls, key: str | None, key_file: Path) -> LoginSealer:
        """``key`` (base64url) when given, else the key in ``key_file``, made there if absent."""
        return cls(decode_login_key(key) if key is not None else load_or_create_login_key(key_file))

    def seal(self, verifier: str, *, row: bytes) -> str:
        sealed = self._sealer.seal(verifier.encode("utf-8"), row)
        return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def open(self, sealed: str, *, row: bytes) -> str | None:
        """The verifier, or None when ``sealed`` was made with another key, for another row, or altered."""
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError):
            return None
        plain = self._sealer.open(raw, row)
        return None if plain is None else plain.decode("utf-8")


def decode_login_key(text: str) -> bytes:
    """A configured key: base64url (padding optional) of exactly 32 bytes, else LoginKeyError."""
    return sealed_secrets.decode_key(text, key_name=_KEY_NAME, error=LoginKeyError)


def new_login_key() -> str:
    """A fresh key in the configured form (base64url, no padding), for operators and deploy tooling."""
    return sealed_secrets.new_key()


def load_or_create_login_key(path: Path) -> bytes:
    """The key in ``path``, made (mode 0600, folder 0700) if absent; LoginKeyError if others may read it."""
    return sealed_secrets.load_or_create_key_file(path, key_name=_KEY_NAME, error=LoginKeyError)

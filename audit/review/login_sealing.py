"""AES-256-GCM over the PKCE verifier of a pending OIDC sign-in, bound to the row that holds it.

Why: the verifier is what turns an intercepted authorization code into a reviewer session (RFC 7636).
It waits in ``audit_review_logins`` for up to ten minutes, so a database dump or backup taken then must
not carry it in the clear. It is stored as ``base64url(nonce (12 bytes) || ciphertext+tag)``, with the
SHA-256 of the row's other columns (state digest, OIDC nonce, return path, expiry) as associated data:
a sealed verifier copied into another row, or a row whose return path or expiry was edited, no longer
opens, and the callback is refused.

The key is the review app's own (``ReviewConfig.login_key``, base64url of 32 bytes; API replicas behind
one load balancer must share it), else a key file made on first use with mode 0600 beside the ledger's
signing key. The rest of Veritrace seals its own secrets the same way, but ``audit`` imports nothing from
it, hence this module.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
LOGIN_KEY_FILE = "review-login.key"
"""File name of the generated key in the ledger's key directory."""
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
        if len(key) != KEY_BYTES:
            raise LoginKeyError(f"the review login key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_key_or_file(cls, key: str | None, key_file: Path) -> LoginSealer:
        """``key`` (base64url) when given, else the key in ``key_file``, made there if absent."""
        return cls(decode_login_key(key) if key is not None else load_or_create_login_key(key_file))

    def seal(self, verifier: str, *, row: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, verifier.encode("utf-8"), row)
        return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def open(self, sealed: str, *, row: bytes) -> str | None:
        """The verifier, or None when ``sealed`` was made with another key, for another row, or altered."""
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) <= NONCE_BYTES:
            return None
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], row)
        except InvalidTag:
            return None
        return plain.decode("utf-8")


def decode_login_key(text: str) -> bytes:
    """A configured key: base64url (padding optional) of exactly 32 bytes."""
    text = text.strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LoginKeyError("the review login key is not base64url") from exc
    if len(key) != KEY_BYTES:
        raise LoginKeyError(f"the review login key must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def new_login_key() -> str:
    """A fresh key in the configured form (base64url, no padding), for operators and deploy tooling."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii").rstrip("=")


def load_or_create_login_key(path: Path) -> bytes:
    """The key in ``path``, made (random, mode 0600, folder 0700) if it does not exist yet.

    Creation is atomic: written to a private temporary file and linked into place, so processes starting
    together all end up with the one key that won the link. A file group or others may read is refused.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(new_login_key() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        raise LoginKeyError(f"{path} is accessible to group or others: chmod 600 it")
    return decode_login_key(path.read_text())

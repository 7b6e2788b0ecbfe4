"""AES-256-GCM sealing of short secrets kept in the database, and the 0600 key file it uses.

Why one module: the viewer (EHR access tokens, PKCE verifiers) and the review app (PKCE verifiers of
pending sign-ins) both keep secrets that a database dump or backup must not hand out, sealed with a key
that lives outside the database. ``audit`` imports nothing from the rest of Veritrace, while ``cds``
may import ``audit``, so the one implementation lives here and both callers wrap it, keeping their own
key names, error types and storage forms.

A sealed value is ``nonce (12 bytes) || ciphertext+tag``; the caller's associated data binds it to its
row, so a value copied into another row does not open. Keys are 32 random bytes, written and configured
as base64url (padding optional).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the 96-bit nonce AES-GCM is specified for (NIST SP 800-38D §8.2)


class AesGcmSealer:
    """Seals and opens short secrets with one AES-256-GCM key and a fresh random nonce each time.

    ``key_name`` (e.g. "viewer session key") names the key in error messages, which never quote it;
    a key of the wrong length raises ``error``.
    """

    def __init__(self, key: bytes, *, key_name: str, error: type[Exception] = ValueError) -> None:
        if len(key) != KEY_BYTES:
            raise error(f"the {key_name} must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plain: bytes, associated: bytes) -> bytes:
        """``nonce || ciphertext+tag`` of ``plain``, opening only with the same ``associated`` data."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes | None:
        """The plain bytes, or None when ``sealed`` was made with another key or data, or altered."""
        if len(sealed) <= NONCE_BYTES:
            return None
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
        except InvalidTag:
            return None


def new_key() -> str:
    """A fresh random key in the configured form (base64url, no padding)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii").rstrip("=")


def decode_key(text: str, *, key_name: str, error: type[Exception] = ValueError) -> bytes:
    """A configured key: base64url (padding optional) of exactly 32 bytes; else ``error``, naming the key."""
    text = text.strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"the {key_name} is not base64url") from exc
    if len(key) != KEY_BYTES:
        raise error(f"the {key_name} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_or_create_key_file(
    path: Path,
    *,
    key_name: str,
    error: type[Exception] = ValueError,
    exposed_error: type[Exception] | None = None,
) -> bytes:
    """The key in ``path``, made (random, mode 0600, folder 0700) if it does not exist yet.

    Creation is atomic: the key is written to a private temporary file and linked into place, so
    processes starting together all end up with the one key that won the link. A file group or others
    may access raises ``exposed_error`` (default ``error``); a file that holds no key raises ``error``.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(new_key() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        raise (exposed_error or error)(f"{path} is accessible to group or others: chmod 600 it")
    return decode_key(path.read_text(), key_name=key_name, error=error)

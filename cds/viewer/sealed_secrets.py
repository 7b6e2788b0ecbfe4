"""AES-256-GCM for the secrets the viewer keeps in the database (EHR access tokens, PKCE verifiers).

A database dump or backup must not hand out live tokens to patients' records, so they are stored
sealed: ``nonce (12 bytes) || ciphertext+tag``, with the row's key (the SHA-256 of its handle or state)
as associated data, so a sealed value copied into another row does not open. The key comes from
``VERITRACE_VIEWER_SESSION_KEY`` (base64url of 32 bytes; API replicas on different machines must share
it) or from a key file made on first use with mode 0600.
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

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretSealer:
    """Seals and opens short secrets with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the viewer session key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_key_or_file(cls, key: str | None, key_file: Path) -> SecretSealer:
        """``key`` from settings (base64url) when given, else the key in ``key_file`` (made if absent)."""
        return cls(decode_key(key) if key is not None else load_or_create_key_file(key_file))

    def seal(self, secret: str, *, bound_to: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode("utf-8"), bound_to.encode("ascii"))

    def open(self, sealed: bytes, *, bound_to: str) -> str | None:
        """The secret, or None when ``sealed`` was made with another key, for another row, or altered."""
        if len(sealed) <= NONCE_BYTES:
            return None
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], bound_to.encode("ascii"))
        except InvalidTag:
            return None
        return plain.decode("utf-8")


def decode_key(text: str) -> bytes:
    """A key given in settings: base64url (padding optional) of exactly 32 bytes."""
    text = text.strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the viewer session key is not base64url") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(f"the viewer session key must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_or_create_key_file(path: Path) -> bytes:
    """The key in ``path``, made (random, mode 0600, folder 0700) if it does not exist yet.

    Creation is atomic: the key is written to a private temporary file and linked into place, so two
    processes starting together end up with the one key that won the link.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(base64.urlsafe_b64encode(os.urandom(KEY_BYTES)))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others: chmod 600 it")
    return decode_key(path.read_text())

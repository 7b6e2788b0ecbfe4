"""AES-256-GCM for the secrets the viewer keeps in the database (EHR access tokens, PKCE verifiers).

A database dump or backup must not hand out live tokens to patients' records, so they are stored
sealed: ``nonce (12 bytes) || ciphertext+tag``, with the row's key (the SHA-256 of its handle or state)
as associated data, so a sealed value copied into another row does not open. The key comes from
``VERITRACE_VIEWER_SESSION_KEY`` (base64url of 32 bytes; API replicas on different machines must share
it) or from a key file made on first use with mode 0600. The sealing itself is
``audit.sealed_secrets``, shared with the review app; this module fixes the viewer's key name, errors
and text-in, bytes-out form.
"""

from __future__ import annotations

from pathlib import Path

from audit import sealed_secrets

_KEY_NAME = "viewer session key"


class SecretSealer:
    """Seals and opens short secrets with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        self._sealer = sealed_secrets.AesGcmSealer(key, key_name=_KEY_NAME)

    @classmethod
    def from_key_or_file(cls, key: str | None, key_file: Path) -> SecretSealer:
        """``key`` from settings (base64url) when given, else the key in ``key_file`` (made if absent)."""
        return cls(decode_key(key) if key is not None else load_or_create_key_file(key_file))

    def seal(self, secret: str, *, bound_to: str) -> bytes:
        return self._sealer.seal(secret.encode("utf-8"), bound_to.encode("ascii"))

    def open(self, sealed: bytes, *, bound_to: str) -> str | None:
        """The secret, or None when ``sealed`` was made with another key, for another row, or altered."""
        plain = self._sealer.open(sealed, bound_to.encode("ascii"))
        return None if plain is None else plain.decode("utf-8")


def decode_key(text: str) -> bytes:
    """A key given in settings: base64url (padding optional) of exactly 32 bytes, else ValueError."""
    return sealed_secrets.decode_key(text, key_name=_KEY_NAME)


def load_or_create_key_file(path: Path) -> bytes:
    """The key in ``path``, made (mode 0600, folder 0700) if absent; PermissionError if others may read it."""
    return sealed_secrets.load_or_create_key_file(path, key_name=_KEY_NAME, exposed_error=PermissionError)

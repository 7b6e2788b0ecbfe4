"""Key set-up the composition root calls at start-up: make a signing key once, never replace it."""

from __future__ import annotations

from audit.config import LedgerConfig
from audit.signing import PRIVATE_KEY_FILE, KeyExists, NoteVerifier, generate_key, load_signer


def ensure_signing_key(config: LedgerConfig) -> NoteVerifier:
    """Return the current verifier key, creating the signing key (mode 0600) if there is none yet."""
    if not (config.key_dir / PRIVATE_KEY_FILE).exists():
        try:
            return generate_key(config.key_dir, config.origin)
        except KeyExists:
            pass  # another process made it first
    return load_signer(config.key_dir, config.origin).verifier

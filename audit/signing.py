"""Ed25519 keys for checkpoints, in the C2SP signed-note key format.

``key_dir`` holds the current private key (``ledger.key``, PKCS#8 PEM, mode 0600) and, under ``keys/``,
the verifier key of every key ever used, so checkpoints signed before a rotation still verify.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG_ED25519 = 0x01
"""Signature type byte for Ed25519 in C2SP signed-note."""
PRIVATE_KEY_FILE = "ledger.key"
VERIFIER_DIR = "keys"


class NoSigningKey(RuntimeError):
    """No private key in ``key_dir``: run ``veritrace audit keygen`` first."""


class KeyExists(RuntimeError):
    """keygen was asked for a new key where one already exists (use rotation)."""


def key_id(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note key hash: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


@dataclass(frozen=True)
class NoteVerifier:
    """A named Ed25519 public key."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """``<name>+<hex key id>+<base64(0x01 || key)>``."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise ValueError("verifier key must be name+keyid+key")
        name, hex_id, encoded = parts
        raw = base64.b64decode(encoded, validate=True)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise ValueError("verifier key is not an Ed25519 key")
        verifier = cls(name=name, public_key=raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise ValueError("verifier key id does not match its key")
        return verifier


@dataclass(frozen=True)
class NoteSigner:
    """A named Ed25519 private key."""

    name: str
    private_key: Ed25519PrivateKey

    @property
    def verifier(self) -> NoteVerifier:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return NoteVerifier(name=self.name, public_key=raw)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def generate_key(key_dir: Path, name: str, *, rotate: bool = False) -> NoteVerifier:
    """Create the signing key (mode 0600) and publish its verifier key under ``keys/``.

    With ``rotate`` an existing private key is replaced and destroyed; its verifier key stays, so the
    checkpoints it signed still verify. Without it an existing key is an error, never overwritten.
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    (key_dir / VERIFIER_DIR).mkdir(exist_ok=True)
    private_path = key_dir / PRIVATE_KEY_FILE
    if private_path.exists() and not rotate:
        raise KeyExists(f"{private_path} exists; rotate it instead")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = key_dir / f".{PRIVATE_KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    signer = NoteSigner(name=name, private_key=key)
    verifier = signer.verifier
    try:
        if rotate:
            # Publish the new verifier first, so no checkpoint is ever signed by an unpublished key.
            _publish(key_dir, verifier)
            os.replace(tmp, private_path)  # the old private key is gone from here on
        else:
            os.link(tmp, private_path)  # atomic create-if-absent: two processes never both win
            _publish(key_dir, verifier)
    except FileExistsError as exc:
        raise KeyExists(f"{private_path} exists; rotate it instead") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return verifier


def _publish(key_dir: Path, verifier: NoteVerifier) -> None:
    (key_dir / VERIFIER_DIR / f"{verifier.key_id.hex()}.vkey").write_text(verifier.vkey + "\n")


def load_signer(key_dir: Path, name: str) -> NoteSigner:
    """The current signing key. Raises NoSigningKey when keygen has not run."""
    path = key_dir / PRIVATE_KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NoSigningKey(f"no signing key at {path}; run `veritrace audit keygen`") from exc
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise NoSigningKey(f"{path} is not an Ed25519 private key")
    return NoteSigner(name=name, private_key=key)


def load_verifiers(key_dir: Path) -> dict[bytes, NoteVerifier]:
    """Every published verifier key, by key id."""
    found: dict[bytes, NoteVerifier] = {}
    directory = key_dir / VERIFIER_DIR
    if directory.is_dir():
        for path in sorted(directory.glob("*.vkey")):
            verifier = NoteVerifier.from_vkey(path.read_text())
            found[verifier.key_id] = verifier
    return found

"""The spool's master key: made once by an operator, read from a file, never logged nor kept in the database.

Why a file and not an environment variable: a key in the environment shows up in process listings, crash
reports and `docker inspect`; a file can be a mounted secret with owner-only permissions, which is checked
here the way ssh checks private keys. Why never created on first start: on a cluster every process would
create its own key, and a missing secret mount would silently start a new key, leaving every earlier file
unreadable. `veritrace spool create-key` makes it explicitly, and a configured but missing key stops the
process with a message saying so.

The file holds the 32 key bytes in base64 on one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from pathlib import Path

KEY_BYTES = 32  # AES-256
_KEY_ID_LABEL = b"veritrace spool key id"


class SpoolKeyError(ValueError):
    """The key file is missing, unreadable, too open, or does not hold a key. Messages never quote it."""


class SpoolKey:
    """A 256-bit master key. `key_id` (8 bytes) names it in file headers without revealing it."""

    __slots__ = ("_material", "key_id")

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_BYTES:
            raise SpoolKeyError(f"a spool key is {KEY_BYTES} bytes, got {len(material)}")
        self._material = bytes(material)
        self.key_id = hmac.new(self._material, _KEY_ID_LABEL, hashlib.sha256).digest()[:8]

    @property
    def material(self) -> bytes:
        """The raw key, for the cipher only."""
        return self._material

    def __repr__(self) -> str:
        return f"SpoolKey(id={self.key_id.hex()})"


def create_spool_key(path: Path) -> SpoolKey:
    """Write a new random key to `path` (mode 0600, parent 0700). Requires that `path` does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SpoolKey(os.urandom(KEY_BYTES))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SpoolKeyError(
            f"{path} already exists; refusing to replace it (files encrypted with it would become unreadable)"
        ) from exc
    try:
        os.write(fd, base64.b64encode(key.material) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_spool_key(path: Path) -> SpoolKey:
    """Read the key at `path`; refuses a file that group or others may read or write."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise SpoolKeyError(
            f"spool key file {path} does not exist; create it with `veritrace spool create-key`"
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise SpoolKeyError(f"spool key file {path} is not a regular file")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise SpoolKeyError(
            f"spool key file {path} is accessible to group or others (mode {mode:04o}); "
            "restrict it with `chmod 600` (or mount the secret with mode 0400)"
        )
    try:
        material = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SpoolKeyError(f"spool key file {path} does not hold base64 text") from exc
    if len(material) != KEY_BYTES:
        raise SpoolKeyError(f"spool key file {path} holds {len(material)} bytes, expected {KEY_BYTES}")
    return SpoolKey(material)

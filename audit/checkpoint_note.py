"""Signed checkpoints in the C2SP tlog-checkpoint / signed-note text format.

::

    <origin>
    <tree size, decimal>
    <base64 root hash>
    timestamp <unix milliseconds>

    — <key name> <base64(key id || Ed25519 signature)>

The signature covers the body (the first four lines, each ending in a newline). The timestamp is an
extension line, so any tlog-checkpoint reader still understands the note.
"""

from __future__ import annotations

import base64
import binascii

import pydantic

from audit.signing import NoteSigner, NoteVerifier

SIGNATURE_DASH = "\u2014"
TIMESTAMP_PREFIX = "timestamp "


class CheckpointError(ValueError):
    """A checkpoint note is malformed or its signature does not verify."""


class Checkpoint(pydantic.BaseModel):
    """Signed: the log of ``origin`` had ``size`` entries with ``root_hash`` at ``timestamp_ms``."""

    model_config = pydantic.ConfigDict(frozen=True)

    origin: str
    size: int
    root_hash: bytes
    timestamp_ms: int
    key_id: str
    """Hex key id of the signing key."""
    note: str
    """The signed note, exactly as signed."""


def checkpoint_body(origin: str, size: int, root_hash: bytes, timestamp_ms: int) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root_hash).decode()}\n{TIMESTAMP_PREFIX}{timestamp_ms}\n"


def sign_checkpoint(signer: NoteSigner, size: int, root_hash: bytes, timestamp_ms: int) -> Checkpoint:
    body = checkpoint_body(signer.name, size, root_hash, timestamp_ms)
    kid = signer.verifier.key_id
    signature = base64.b64encode(kid + signer.sign(body.encode())).decode()
    note = f"{body}\n{SIGNATURE_DASH} {signer.name} {signature}\n"
    return Checkpoint(
        origin=signer.name,
        size=size,
        root_hash=root_hash,
        timestamp_ms=timestamp_ms,
        key_id=kid.hex(),
        note=note,
    )


def open_checkpoint(note: str, verifiers: dict[bytes, NoteVerifier], origin: str) -> Checkpoint:
    """Parse a signed checkpoint note and check its signature against a known key of ``origin``."""
    body, sep, signatures = note.partition("\n\n")
    if not sep or not body:
        raise CheckpointError("note has no blank line between body and signatures")
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint body has {len(lines)} lines, want at least 3")
    if lines[0] != origin:
        raise CheckpointError(f"checkpoint is for origin {lines[0]!r}, want {origin!r}")
    if not lines[1].isdigit() or (lines[1] != "0" and lines[1].startswith("0")):
        raise CheckpointError("checkpoint size is not a decimal number")
    try:
        root_hash = base64.b64decode(lines[2], validate=True)
    except binascii.Error as exc:
        raise CheckpointError("checkpoint root is not base64") from exc
    if len(root_hash) != 32:
        raise CheckpointError(f"checkpoint root is {len(root_hash)} bytes, want 32")
    stamps = [line for line in lines[3:] if line.startswith(TIMESTAMP_PREFIX)]
    if len(stamps) != 1 or not stamps[0][len(TIMESTAMP_PREFIX) :].isdigit():
        raise CheckpointError("checkpoint has no single timestamp line")
    for line in signatures.split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != SIGNATURE_DASH:
            raise CheckpointError("malformed signature line")
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except binascii.Error as exc:
            raise CheckpointError("signature is not base64") from exc
        verifier = verifiers.get(raw[:4])
        if verifier is None or verifier.name != parts[1]:
            continue
        if not verifier.verify(body.encode(), raw[4:]):
            raise CheckpointError(f"signature by key {raw[:4].hex()} does not verify")
        return Checkpoint(
            origin=origin,
            size=int(lines[1]),
            root_hash=root_hash,
            timestamp_ms=int(stamps[0][len(TIMESTAMP_PREFIX) :]),
            key_id=raw[:4].hex(),
            note=note,
        )
    raise CheckpointError("no signature by a known key")

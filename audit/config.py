"""Settings the audit ledger needs; the composition root (``cds``) fills them from ``VERITRACE_*``."""

from __future__ import annotations

from pathlib import Path

import pydantic


class LedgerConfig(pydantic.BaseModel):
    """Where the ledger keeps its keys and anchors, and how often it signs a checkpoint.

    No path defaults here on purpose: the composition root passes paths under ``$VERITRACE_HOME`` so
    that nothing secret ever lands inside a source checkout.
    """

    model_config = pydantic.ConfigDict(frozen=True)

    origin: str = "veritrace.local/ledger"
    """First line of every checkpoint note, and the signing key's name (C2SP signed-note)."""
    checkpoint_every: int = pydantic.Field(default=256, ge=1)
    """Take a checkpoint when an append crosses a multiple of this many entries."""
    checkpoint_interval_s: float = pydantic.Field(default=60.0, gt=0)
    """Take a checkpoint when an append finds the latest one older than this."""
    key_dir: Path
    """Signing keys: the Ed25519 private key (mode 0600, made by keygen) and every public key ever used."""
    anchor_dir: Path | None
    """A directory outside the database that receives a copy of every signed checkpoint."""
    anchor_url: str | None = None
    """Optional HTTP endpoint that receives every signed checkpoint (POST, text/plain)."""
    inline_payload_limit: int = pydantic.Field(default=64 * 1024, ge=0)
    """Payloads whose canonical JSON is larger are stored once by digest, and the entry points to them."""
    sync_every_append: bool = False
    """If False, an append commits without waiting for the disk flush; every checkpoint forces one, so a
    signed checkpoint never covers an entry a power cut could lose. True pays one flush per append."""

    @pydantic.field_validator("origin")
    @classmethod
    def _origin_is_one_line(cls, value: str) -> str:
        if not value or value != value.strip() or any(c in value for c in "\n\r\t"):
            raise ValueError("origin must be a non-empty single line without surrounding spaces")
        if " " in value or "+" in value:
            raise ValueError("origin is also the signing key name: it may not contain spaces or '+'")
        return value

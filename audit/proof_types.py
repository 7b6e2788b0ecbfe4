"""Proofs as the ledger hands them out: self-contained, with the roots they lead to."""

from __future__ import annotations

import pydantic

from audit.proofs import verify_consistency, verify_inclusion

_HEX_BYTES = pydantic.ConfigDict(frozen=True, ser_json_bytes="hex", val_json_bytes="hex")


class InclusionProof(pydantic.BaseModel):
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves with ``root_hash``."""

    model_config = _HEX_BYTES

    index: int
    size: int
    leaf_hash: bytes
    root_hash: bytes
    path: list[bytes]

    def verify(self) -> None:
        """Raise ProofError unless the path leads from the leaf to the root."""
        verify_inclusion(self.index, self.size, self.leaf_hash, self.path, self.root_hash)


class ConsistencyProof(pydantic.BaseModel):
    """RFC 9162 consistency proof that the tree of ``second`` leaves extends the one of ``first``."""

    model_config = _HEX_BYTES

    first: int
    second: int
    first_root: bytes
    second_root: bytes
    path: list[bytes]

    def verify(self) -> None:
        verify_consistency(self.first, self.second, self.path, self.first_root, self.second_root)

"""A digest of a checkpoint's weight files, recorded in every trace as the model's identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CHUNK = 8 * 1024 * 1024


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 over `name\\0sha256(file)\\n` for each weight file in name order.

    Hashing file bytes (not tensors) makes the digest reproducible with `sha256sum`, independent of the
    dtype the runtime casts to; names are included so that swapping two shards changes it.
    Requires at least one weight file in `model_dir`.
    """
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {model_dir}")
    outer = hashlib.sha256()
    for path in files:
        inner = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                inner.update(chunk)
        outer.update(f"{path.name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()

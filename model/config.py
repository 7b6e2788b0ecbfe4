"""Settings the VLM runtime needs; `cds/settings.py` composes them from `VERITRACE_MODEL_*` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class ModelConfig(BaseModel):
    """Where the hospital's model lives and how much of it one study may use.

    `path` must be a local directory: the runtime never downloads weights, so a hub id is refused rather
    than silently fetched. `allow_remote_code` stays off unless an operator has reviewed the checkpoint's
    Python files, because `trust_remote_code` executes them inside the worker that holds patient data.
    """

    path: Path | None = None
    device: str = "auto"
    allow_remote_code: bool = False
    # Room for a whole report at the schema's bounds (statements x text + citations); generation stops
    # at the closing brace, so the cap costs nothing when the report is shorter.
    max_new_tokens: int = Field(default=4096, ge=1, le=8192)
    max_images: int = Field(default=4, ge=1, le=64)
    # torch's intra-op CPU threads per worker process; None shares the cores among the pool's children.
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)

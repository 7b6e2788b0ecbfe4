"""The embedded default model: a tiny, untrained Qwen2.5-VL built locally so one box runs with no weights."""

from __future__ import annotations

import logging

from cds.settings import Settings

log = logging.getLogger(__name__)


def ensure_demo_model(settings: Settings) -> None:
    """Build the tiny model at the default path if nothing is there; never overwrite a configured model."""
    path = settings.resolved_model_path
    if path.exists():
        return
    if settings.model_path is not None:
        raise SystemExit(f"VERITRACE_MODEL_PATH={path} does not exist: point it at a local model directory")
    from model.tiny import make_tiny

    log.warning("no model configured: building a tiny UNTRAINED qwen2_5_vl model at %s", path)
    make_tiny("qwen2_5_vl", path)

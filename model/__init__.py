"""Veritrace's VLM runtime: model loading, DICOM preprocessing, constrained report drafting.

Names are re-exported lazily: `import model` and `from model import DraftReport` stay free of torch and
transformers, which only load when a runtime name (e.g. `load_vlm`) is first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ModelConfig": "model.config",
    "EvidenceItem": "model.report",
    "ImageRef": "model.report",
    "Statement": "model.report",
    "DraftReport": "model.report",
    "Severity": "model.report",
    "Laterality": "model.report",
    "PatientContext": "model.context",
    "TraceStep": "model.trace",
    "StepSink": "model.trace",
    "ModelImage": "model.imaging",
    "DicomImageError": "model.imaging",
    "load_model_image": "model.imaging",
    "select_images": "model.series_selection",
    "select_frames": "model.series_selection",
    "LoadedVlm": "model.runtime",
    "ModelIdentity": "model.runtime",
    "ModelLoadError": "model.runtime",
    "Generation": "model.runtime",
    "GenerationRequest": "model.runtime",
    "load_vlm": "model.runtime",
    "make_tiny": "model.tiny",
    "DraftResult": "model.draft",
    "draft_report": "model.draft",
    "BatchScheduler": "model.batching",
    "build_model_cli": "model.cli",
}
__all__ = [
    "BatchScheduler",
    "DicomImageError",
    "DraftReport",
    "DraftResult",
    "EvidenceItem",
    "Generation",
    "GenerationRequest",
    "ImageRef",
    "Laterality",
    "LoadedVlm",
    "ModelConfig",
    "ModelIdentity",
    "ModelImage",
    "ModelLoadError",
    "PatientContext",
    "Severity",
    "Statement",
    "StepSink",
    "TraceStep",
    "build_model_cli",
    "draft_report",
    "load_model_image",
    "load_vlm",
    "make_tiny",
    "select_frames",
    "select_images",
]

if TYPE_CHECKING:
    from model.batching import BatchScheduler
    from model.cli import build_model_cli
    from model.config import ModelConfig
    from model.context import PatientContext
    from model.draft import DraftResult, draft_report
    from model.imaging import DicomImageError, ModelImage, load_model_image
    from model.report import DraftReport, EvidenceItem, ImageRef, Laterality, Severity, Statement
    from model.runtime import (
        Generation,
        GenerationRequest,
        LoadedVlm,
        ModelIdentity,
        ModelLoadError,
        load_vlm,
    )
    from model.series_selection import select_frames, select_images
    from model.tiny import make_tiny
    from model.trace import StepSink, TraceStep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

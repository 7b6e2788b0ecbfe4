"""Report, context and config types: validation at the edges, and `import model` staying torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.config import ModelConfig
from model.context import PatientContext
from model.report import DraftReport, EvidenceItem, ImageRef, Severity, Statement

SHA = "a" * 64


def _item(id_: str) -> EvidenceItem:
    return EvidenceItem(
        id=id_,
        resource_type="Observation",
        resource_id="o1",
        version_id="3",
        sha256=SHA,
        display="Creatinine 1.1",
    )


def test_importing_model_and_its_types_does_not_import_torch() -> None:
    code = (
        "import sys, model; from model import DraftReport, PatientContext, ModelConfig, TraceStep; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_export_resolves_and_unknown_name_fails() -> None:
    import model

    assert model.DraftReport is DraftReport
    with pytest.raises(AttributeError):
        _ = model.NoSuchThing


def test_context_rejects_duplicate_evidence_ids() -> None:
    with pytest.raises(ValidationError, match="more than once"):
        PatientContext(patient_id="p1", evidence=[_item("e1"), _item("e1")])


def test_evidence_digest_must_be_hex_sha256() -> None:
    with pytest.raises(ValidationError):
        EvidenceItem(id="e1", resource_type="Observation", resource_id="o1", sha256="xyz", display="d")


def test_statement_severity_is_an_enum() -> None:
    assert Statement.model_validate({"text": "ok", "severity": "critical"}).severity is Severity.CRITICAL
    with pytest.raises(ValidationError):
        Statement.model_validate({"text": "ok", "severity": "urgent"})


def test_image_ref_citation_id_names_sop_and_frame() -> None:
    ref = ImageRef(study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4", frame=7)
    assert ref.citation_id == "img:1.2.3.4:7"


def test_model_config_defaults_and_bounds() -> None:
    cfg = ModelConfig()
    assert (cfg.path, cfg.device, cfg.allow_remote_code, cfg.max_new_tokens, cfg.max_images) == (
        None,
        "auto",
        False,
        4096,
        4,
    )
    assert ModelConfig.model_validate({"path": "/models/x"}).path == Path("/models/x")
    with pytest.raises(ValidationError):
        ModelConfig(max_images=0)


def test_draft_report_requires_untrained_label() -> None:
    with pytest.raises(ValidationError):
        DraftReport()  # type: ignore[call-arg]

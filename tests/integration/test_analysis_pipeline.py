"""The worker's analysis body on real parts: SCP-ingested study, SQLite store, ledger, a tiny VLM."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cds.composition import Components
from cds.demo_study import build_demo_ct_study
from cds.settings import Settings
from integrations.analysis.pipeline import run_analysis
from integrations.dicom.scp import StorageScp
from integrations.dicom.stability import StableStudyTracker
from integrations.store.models import Analysis, Report
from tests.conftest import free_port


@pytest.fixture
def components(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Components:
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VERITRACE_DICOM_PORT", str(free_port()))
    monkeypatch.setenv("VERITRACE_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("VERITRACE_AGENT_KNOWLEDGE_TOOLS", "false")
    components = Components(Settings())
    components.prepare_storage()
    return components


def _ingest_and_queue(components: Components, tmp_path: Path) -> str:
    """storescu → our SCP → tracker; returns the queued analysis id."""
    settings = components.settings
    scp = StorageScp(settings.dicom_config(), components.session_factory, components.ledger)
    scp.start()
    try:
        paths = build_demo_ct_study(tmp_path / "study", patient_id="unmatched-patient", slices=2)
        sent = subprocess.run(
            ["storescu", "-aec", settings.dicom_ae_title, "127.0.0.1", str(scp.port), *map(str, paths)],
            capture_output=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr.decode()
    finally:
        scp.stop()
    queued: list[str] = []
    tracker = StableStudyTracker(components.session_factory, components.ledger, 0.0, queued.append)
    tracker.poll_once(datetime.now(UTC) + timedelta(seconds=5))
    assert len(queued) == 1
    return queued[0]


def test_study_without_fhir_is_drafted_verified_and_not_written_back(
    components: Components, tmp_path: Path
) -> None:
    analysis_id = _ingest_and_queue(components, tmp_path)
    runtime = components.worker_runtime()
    written_back: list[str] = []
    runtime.enqueue_writeback = written_back.append

    report_id = run_analysis(runtime, analysis_id)
    assert report_id is not None
    assert run_analysis(runtime, analysis_id) == report_id  # redelivery is a no-op

    with components.session_factory() as session:
        report = session.get(Report, report_id)
        analysis = session.get(Analysis, analysis_id)
    assert report is not None and analysis is not None
    assert analysis.status == "completed" and analysis.attempts == 1
    assert report.untrained_model and report.patient_id is None
    assert "rejected" in report.body and "signals" in report.body
    assert any(step["kind"] == "verification" for step in analysis.trace["steps"])
    assert written_back == []  # no FHIR patient: nothing to write back to
    kinds = [components.ledger.entry(i).kind for i in range(components.ledger.size())]
    for kind in (
        "analysis.started",
        "fhir.context.missing",
        "model.invoked",
        "report.verified",
        "report.drafted",
    ):
        assert kind in kinds


def test_study_whose_files_are_gone_fails_instead_of_drafting(components: Components, tmp_path: Path) -> None:
    analysis_id = _ingest_and_queue(components, tmp_path)
    for path in components.settings.dicom_config().spool_dir.rglob("*"):
        if path.is_file():
            path.unlink()
    assert run_analysis(components.worker_runtime(), analysis_id) is None
    with components.session_factory() as session:
        analysis = session.get(Analysis, analysis_id)
        reports = session.scalars(select(Report)).all()
    assert analysis is not None and analysis.status == "failed"
    assert "no readable images" in (analysis.error or "")
    assert reports == []

"""One study from a real DICOM sender to a CDS card, on both deployments.

dcmtk's `storescu` sends a CT study to our SCP → the study goes stable → a Celery worker process analyses it
with a tiny Qwen2.5-VL → the draft lands in the real FHIR server as a preliminary DiagnosticReport → a signed
`patient-view` call returns a card for it → the audit ledger holds every step and verifies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from audit import Ledger
from cds.demo_ehr import DemoEhr
from cds.demo_study import build_demo_ct_study
from cds.settings import Settings
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.models import Report
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
PATIENT = "vt-demo-1"
EXPECTED_LEDGER_KINDS = {
    "dicom.received",
    "study.stable",
    "analysis.queued",
    "analysis.started",
    "model.invoked",
    "report.drafted",
    "analysis.completed",
    "fhir.write",
    "cds.hook",
}


def _wait_http(url: str, processes: list[subprocess.Popen[bytes]], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up")


def _wait_for_report(settings: Settings, study_uid: str, timeout_s: float = 240) -> Report:
    engine = make_engine(settings.store_config())
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with make_session_factory(engine)() as session:
                report = session.scalar(
                    select(Report).where(Report.study_uid == study_uid, Report.fhir_report_id.is_not(None))
                )
            if report is not None:
                return report
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise AssertionError("no draft report written back in time")


@pytest.fixture
def settings(
    tmp_path: Path, fhir_server: LocalFhirServer, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """VERITRACE_* for this test in os.environ, so the child processes and this process agree."""
    home = tmp_path / "home"
    env = {
        "VERITRACE_HOME": str(home),
        "VERITRACE_FHIR_BASE_URL": fhir_server.base_url,
        "VERITRACE_MODEL_PATH": str(tiny_model_dir),
        "VERITRACE_API_PORT": str(free_port()),
        "VERITRACE_DICOM_PORT": str(free_port()),
        "VERITRACE_STABLE_AGE": "1",
        # The HPO ontology (~25 s CPU per worker) is exercised by tests/unit/test_tools_hpo.py.
        "VERITRACE_AGENT_KNOWLEDGE_TOOLS": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ehr = DemoEhr.create(Settings())
    monkeypatch.setenv("VERITRACE_CDS_ISSUERS_FILE", str(ehr.issuers_file))
    with FhirClient(fhir_server.base_url) as client:
        load_synthetic_patients(client, generate_patients())
    return Settings()


def _spawn(args: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{args[0]}.log", "wb")  # noqa: SIM115  (lives as long as the process)
    return subprocess.Popen([sys.executable, "-m", "cds.cli", *args], stdout=log, stderr=log)


def _wait_dicom(settings: Settings, processes: list[subprocess.Popen[bytes]], timeout_s: float = 90) -> None:
    """The `dicom` process migrates and opens its port on its own schedule: C-ECHO until it answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args} exited with {process.returncode}")
        echo = subprocess.run(
            ["echoscu", "-aec", settings.dicom_ae_title, settings.dicom_host, str(settings.dicom_port)],
            capture_output=True,
            timeout=30,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("the DICOM SCP did not answer C-ECHO")


def _run_path(settings: Settings, processes: list[subprocess.Popen[bytes]], fhir_base_url: str) -> None:
    _wait_http(f"{settings.resolved_public_base_url}/cds-services", processes)
    _wait_dicom(settings, processes)

    study_dir = settings.resolved_home / "incoming"
    paths = build_demo_ct_study(study_dir, patient_id=PATIENT, slices=3)
    sent = subprocess.run(
        [
            "storescu",
            "-aet",
            "TEST_PACS",
            "-aec",
            settings.dicom_ae_title,
            settings.dicom_host,
            str(settings.dicom_port),
            *map(str, paths),
        ],
        capture_output=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr.decode()
    from pydicom import dcmread

    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    report = _wait_for_report(settings, study_uid)

    with FhirClient(fhir_base_url) as client:
        diagnostic_report = client.read("DiagnosticReport", str(report.fhir_report_id))
    assert diagnostic_report["status"] == "preliminary"
    assert diagnostic_report["subject"]["reference"] == f"Patient/{PATIENT}"

    ehr = DemoEhr.load(settings)
    response = ehr.call_patient_view(settings, PATIENT, fhir_base_url)
    drafts = [card for card in response["cards"] if report.id in str(card.get("links", ""))]
    assert drafts, response
    assert drafts[0]["summary"].startswith("AI draft")

    engine = make_engine(settings.store_config())
    try:
        ledger = Ledger(engine, settings.ledger_config())
        kinds = {ledger.entry(i).kind for i in range(ledger.size())}
        assert kinds >= EXPECTED_LEDGER_KINDS, EXPECTED_LEDGER_KINDS - kinds
        ledger.checkpoint()
        ledger.verify()
    finally:
        engine.dispose()


def test_embedded_sqlite_serve(settings: Settings, tmp_path: Path, fhir_server: LocalFhirServer) -> None:
    """`veritrace serve`: SQLite + the SQLite-backed broker, API + SCP + worker from one command."""
    serve = _spawn(["serve"], tmp_path)
    try:
        _run_path(settings, [serve], fhir_server.base_url)
    finally:
        serve.terminate()
        serve.wait(timeout=30)


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_postgres_rabbitmq_separate_processes(
    tmp_path: Path,
    fhir_server: LocalFhirServer,
    postgres_url: str,
    rabbitmq_url: str,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
) -> None:
    """The scale-out shape: `api`, `dicom` and `worker -Q gpu,io` as separate processes on PG + RabbitMQ."""
    monkeypatch.setenv("VERITRACE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("VERITRACE_BROKER_URL", rabbitmq_url)
    settings = Settings()
    upgrade = subprocess.run(
        [sys.executable, "-m", "cds.cli", "db", "upgrade"], capture_output=True, timeout=120
    )
    assert upgrade.returncode == 0, upgrade.stderr.decode()
    processes = [
        _spawn(["api"], tmp_path),
        _spawn(["dicom"], tmp_path),
        _spawn(["worker", "-Q", "gpu,io"], tmp_path),
    ]
    try:
        _run_path(settings, processes, fhir_server.base_url)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

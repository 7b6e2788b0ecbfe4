"""Orthanc as the hospital PACS: it forwards a study to our SCP, we analyse it, our draft SR lands in Orthanc.

Everything is real: Orthanc (Debian's `orthanc` package) as a plain child process on free ports with the
template in deploy/orthanc/, our `veritrace dicom` and `veritrace worker` processes on SQLite and the
embedded broker, the tiny Qwen2.5-VL through the real loading path. No FHIR server: the analysis proceeds
without patient context (audited as `fhir.context.missing`), which is the path a PACS-only install takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import select

from audit import Ledger
from cds.demo_study import build_demo_ct_study
from cds.settings import Settings
from integrations.dicom.sr_dispatch import sr_uid_for
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.models import Analysis, Instance, Report, Study
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "orthanc" / "orthanc-pacs.json"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, content: bytes | str, timeout: float = 60) -> Any:
        response = httpx.post(f"{self.url}{path}", content=content, timeout=timeout)
        response.raise_for_status()
        return response.json()


def orthanc_config(storage: Path, http_port: int, dicom_port: int, veritrace_port: int) -> dict[str, Any]:
    """The deploy template with its placeholders filled, parsed (so a broken template fails here)."""
    text = (
        TEMPLATE.read_text()
        .replace("__STORAGE__", str(storage))
        .replace("__HTTP_PORT__", str(http_port))
        .replace("__DICOM_PORT__", str(dicom_port))
        .replace("__VERITRACE_PORT__", str(veritrace_port))
    )
    config: dict[str, Any] = json.loads(text)
    return config


@pytest.fixture
def veritrace_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, veritrace_port: int) -> Iterator[Orthanc]:
    folder = tmp_path / "orthanc"
    folder.mkdir()
    config = orthanc_config(folder / "storage", free_port(), free_port(), veritrace_port)
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=log)
    server = Orthanc(process, config["HttpPort"], config["DicomPort"])
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (folder / "orthanc.log").read_text()
            try:
                server.get("/system")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def settings(
    tmp_path: Path,
    tiny_model_dir: Path,
    orthanc: Orthanc,
    veritrace_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """VERITRACE_* in os.environ so our child processes and this process read the same settings."""
    for key in ("VERITRACE_FHIR_BASE_URL", "VERITRACE_DATABASE_URL", "VERITRACE_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    env = {
        "VERITRACE_HOME": str(tmp_path / "home"),
        "VERITRACE_MODEL_PATH": str(tiny_model_dir),
        "VERITRACE_DICOM_PORT": str(veritrace_port),
        "VERITRACE_DICOM_ALLOWED_CALLING_AETS": '["ORTHANC"]',
        "VERITRACE_STABLE_AGE": "1",
        "VERITRACE_SR_DESTINATION_AE": "ORTHANC",
        "VERITRACE_SR_DESTINATION_HOST": "127.0.0.1",
        "VERITRACE_SR_DESTINATION_PORT": str(orthanc.dicom_port),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def spawn(args: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"veritrace-{args[0]}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "cds.cli", *args], stdout=log, stderr=log)


@pytest.fixture
def veritrace(settings: Settings, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`veritrace dicom` and `veritrace worker -Q gpu,io` as separate processes, schema migrated first."""
    upgrade = subprocess.run(
        [sys.executable, "-m", "cds.cli", "db", "upgrade"], capture_output=True, timeout=120
    )
    assert upgrade.returncode == 0, upgrade.stderr.decode()
    processes = [spawn(["dicom"], tmp_path), spawn(["worker", "-Q", "gpu,io"], tmp_path)]
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(condition: Any, what: str, processes: list[subprocess.Popen[bytes]], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args!r} exited with {process.returncode}"
        result = condition()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set: what follows the preamble, "DICM" and the group 0002 elements."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[128 + 4 + 8 : 128 + 4 + 12], "little")
    return data[128 + 4 + 12 + group_length :]


def without_trailing_padding(data: bytes) -> bytes:
    """Cut an Explicit VR Little Endian data set at its (FFFC,FFFC) OB element, if it ends with one."""
    at = data.rfind(b"\xfc\xff\xfc\xffOB\x00\x00")
    if at >= 0 and at + 12 + int.from_bytes(data[at + 8 : at + 12], "little") == len(data):
        return data[:at]
    return data


def echo_ok(orthanc: Orthanc) -> bool:
    """Orthanc's own C-ECHO to the `veritrace` modality: our SCP is up and accepts Orthanc."""
    try:
        return (
            httpx.post(f"{orthanc.url}/modalities/veritrace/echo", content="{}", timeout=10).status_code
            == 200
        )
    except httpx.HTTPError:
        return False


def test_study_from_orthanc_is_analysed_and_the_draft_sr_arrives_back(
    settings: Settings, orthanc: Orthanc, veritrace: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # The PACS holds a study (uploaded through its REST API, as a modality's push would leave it).
    paths = build_demo_ct_study(tmp_path / "study", patient_id="VT-ORTHANC-1", slices=3)
    uploaded = [orthanc.post("/instances", path.read_bytes()) for path in paths]
    orthanc_study = uploaded[0]["ParentStudy"]
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)

    # Orthanc forwards it to our SCP (its modality `veritrace`), over DICOM.
    wait_until(lambda: echo_ok(orthanc), "our SCP to answer Orthanc's C-ECHO", veritrace, 60)
    job = orthanc.post("/modalities/veritrace/store", json.dumps({"Resources": [orthanc_study]}))
    assert job.get("InstancesCount", len(paths)) == len(paths), job

    engine = make_engine(settings.store_config())
    sessions = make_session_factory(engine)
    try:

        def completed_report() -> Report | None:
            with sessions() as session:
                return session.scalar(
                    select(Report)
                    .join(Analysis, Analysis.id == Report.analysis_id)
                    .where(Report.study_uid == study_uid, Analysis.status == "completed")
                )

        report = wait_until(completed_report, "the study to be analysed", veritrace, 240)

        # Received exactly as uploaded: every instance's data set (after the File Meta Information, which
        # DIMSE does not carry) byte-identical to the file, up to the Data Set Trailing Padding
        # (FFFC,FFFC) that Orthanc (dcmtk) drops when it sends.
        with sessions() as session:
            study = session.execute(select(Study).where(Study.study_uid == study_uid)).scalar_one()
            instances = session.execute(select(Instance).where(Instance.study_id == study.id)).scalars().all()
        assert study.calling_ae == "ORTHANC"
        spool = settings.dicom_config().spool_dir.resolve()
        received = sorted(dataset_bytes(spool / row.spool_path) for row in instances)
        assert received == sorted(without_trailing_padding(dataset_bytes(path)) for path in paths)
        assert report.untrained_model is True

        # The draft SR back to Orthanc: the worker's io task sends it after the report is stored.
        def study_with_sr() -> list[dict[str, Any]] | None:
            found = orthanc.get(f"/studies/{orthanc_study}/instances")
            return found if len(found) == len(paths) + 1 else None

        in_pacs = wait_until(study_with_sr, "the draft SR to arrive in Orthanc", veritrace, 120)
        sr_tags = [
            orthanc.get(f"/instances/{item['ID']}/simplified-tags")
            for item in in_pacs
            if orthanc.get(f"/instances/{item['ID']}/simplified-tags")["SOPClassUID"] == COMPREHENSIVE_SR
        ]
        assert len(in_pacs) == len(paths) + 1
        [sr] = sr_tags
        assert sr["SOPInstanceUID"] == sr_uid_for(report.id)
        assert (sr["PreliminaryFlag"], sr["CompletionFlag"], sr["VerificationFlag"]) == (
            "PRELIMINARY",
            "PARTIAL",
            "UNVERIFIED",
        )
        assert sr["PatientID"] == "VT-ORTHANC-1"

        ledger = Ledger(engine, settings.ledger_config())
        entries = [ledger.entry(i) for i in range(ledger.size())]
        kinds = {entry.kind for entry in entries}
        assert kinds >= {
            "dicom.received",
            "study.stable",
            "analysis.completed",
            "report.drafted",
            "sr.exported",
        }
        [receipt] = [entry for entry in entries if entry.kind == "dicom.received"]
        payload = receipt.payload or {}
        assert (payload["calling_ae"], payload["instance_count"]) == ("ORTHANC", len(paths))
        ledger.verify()
    finally:
        engine.dispose()

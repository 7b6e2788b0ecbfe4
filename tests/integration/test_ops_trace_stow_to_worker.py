"""One trace from a STOW-RS request to the worker's FHIR calls, across three real processes.

`veritrace api`, `veritrace dicom` and `veritrace worker -Q gpu,io` run on PostgreSQL + RabbitMQ with the
real FHIR server, each writing its spans to its own JSON-lines file (VERITRACE_TRACE_FILE). A study is
stored over STOW-RS; the `dicom` process settles it and publishes the analysis; the worker analyses it,
reading the patient's record and writing the draft back. The worker's task span must carry the request's
trace id and lead back, parent by parent, to the request's span; no span may carry patient data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from cds.demo_study import build_demo_ct_study
from integrations.celery_app import ANALYSE_TASK, WRITEBACK_TASK
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from tests.fault.harness import Deployment, wait_until
from tests.fault.harness import deployment as deployment

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]
PATIENT = "vt-demo-1"
STOW_TOKEN = "stow-trace-test-token"
PROCESSES = ("api", "dicom", "worker")


def _spans(home: Path) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for name in PROCESSES:
        path = home / "traces" / f"{name}.jsonl"
        if path.exists():
            spans.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return spans


def _stow_body(paths: list[Path], boundary: str = "vt-trace") -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        for path in paths
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body + f"--{boundary}--\r\n".encode(), content_type


def _phi_values(paths: list[Path], fhir_base_url: str) -> set[str]:
    """What must never show up in a span: the patient's ids and names, from the DICOM files and FHIR."""
    values = {PATIENT}
    for path in paths:
        dataset = dcmread(path, stop_before_pixels=True)
        values.add(str(dataset.PatientID))
        values.update(part for part in str(dataset.PatientName).split("^") if len(part) > 2)
    with FhirClient(fhir_base_url) as client:
        patient = client.read("Patient", PATIENT)
    for name in patient.get("name", []):
        values.update(part for part in [name.get("family", ""), *name.get("given", [])] if len(part) > 2)
    return values


def test_stow_request_trace_reaches_the_worker_and_its_fhir_calls(
    deployment: Deployment, fhir_server: LocalFhirServer
) -> None:
    with FhirClient(fhir_server.base_url) as client:
        load_synthetic_patients(client, generate_patients(1))
    traces = deployment.home / "traces"
    deployment.env.update(
        {
            "VERITRACE_FHIR_BASE_URL": fhir_server.base_url,
            "VERITRACE_STOW_TOKENS": json.dumps([STOW_TOKEN]),
            "VERITRACE_AGENT_KNOWLEDGE_TOOLS": "false",
            "VERITRACE_MODEL_MAX_NEW_TOKENS": "8",
        }
    )
    for name, *args in (("api", "api"), ("dicom", "dicom"), ("worker", "worker", "-Q", "gpu,io")):
        deployment.spawn(name, *args, trace_file=str(traces / f"{name}.jsonl"))
    settings = deployment.settings()
    deployment.wait_http(f"{settings.resolved_public_base_url}/healthz")
    deployment.wait_log("worker", "model loaded")

    paths = build_demo_ct_study(deployment.home / "incoming", patient_id=PATIENT, slices=2)
    body, content_type = _stow_body(paths)
    stored = httpx.post(
        f"{settings.resolved_public_base_url}/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {STOW_TOKEN}"},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text

    def finished() -> list[dict[str, Any]]:
        # Each process batches its spans, so one file can be written before another: wait until the
        # task spans' parents (the publish spans) have arrived too, not just the task spans.
        spans = _spans(deployment.home)
        names = {span["name"] for span in spans}
        ids = {span["span_id"] for span in spans}
        tasks = [span for span in spans if span["name"] in {f"run {ANALYSE_TASK}", f"run {WRITEBACK_TASK}"}]
        done = {f"run {ANALYSE_TASK}", f"run {WRITEBACK_TASK}", "POST /dicomweb/studies"} <= names and all(
            span["parent_span_id"] in ids for span in tasks
        )
        return spans if done else []

    spans = wait_until(finished, timeout_s=240, what="the request, analysis and write-back spans")
    by_id = {span["span_id"]: span for span in spans}
    request = next(span for span in spans if span["name"] == "POST /dicomweb/studies")
    analysis = next(span for span in spans if span["name"] == f"run {ANALYSE_TASK}")
    assert request["service"] == "veritrace-api" and request["kind"] == "SERVER"
    assert analysis["service"] == "veritrace-worker" and analysis["kind"] == "CONSUMER"
    assert analysis["trace_id"] == request["trace_id"]
    # One span for the request in the API process (FastAPI's own request and endpoint spans are off).
    in_api = [
        span["name"]
        for span in spans
        if span["service"] == "veritrace-api" and span["trace_id"] == request["trace_id"]
    ]
    assert in_api == ["POST /dicomweb/studies"]

    # worker task span -> publish span (dicom process) -> the API request span.
    publish = by_id[analysis["parent_span_id"]]
    assert publish["name"] == f"publish {ANALYSE_TASK}" and publish["service"] == "veritrace-dicom"
    assert publish["parent_span_id"] == request["span_id"]

    # The worker's FHIR calls are children of its task spans, in the same trace: the patient's record
    # read by the analysis, the transaction (DiagnosticReport) posted by the write-back task it queued.
    fhir = [span for span in spans if span["name"].startswith("FHIR ")]
    assert fhir and {span["trace_id"] for span in fhir} == {request["trace_id"]}
    read_by_analysis = [span for span in fhir if span["parent_span_id"] == analysis["span_id"]]
    assert read_by_analysis and all(span["kind"] == "CLIENT" for span in read_by_analysis)
    writeback = next(span for span in spans if span["name"] == f"run {WRITEBACK_TASK}")
    assert by_id[writeback["parent_span_id"]]["parent_span_id"] == analysis["span_id"]
    written = [span for span in fhir if span["parent_span_id"] == writeback["span_id"]]
    assert "FHIR POST system" in {span["name"] for span in written}, [span["name"] for span in written]

    # No patient data anywhere in the spans of the three processes.
    phi = _phi_values(paths, fhir_server.base_url)
    assert len(phi) >= 3, phi  # the id and at least a family and a given name to look for
    for span in spans:
        text = json.dumps({"name": span["name"], "attributes": span["attributes"]})
        leaked = [value for value in phi if value in text]
        assert not leaked, (span["name"], leaked)

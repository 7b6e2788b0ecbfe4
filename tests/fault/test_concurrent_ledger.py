"""Two API replicas, two DICOM gateways and an outside writer append to the ledger at once: one log.

Every process has its own Ledger object on the same PostgreSQL database; the sequencer assigns leaf
indexes under a database lock, so the result must be one gap-free sequence whose tree verifies, with
exactly the entries each process made (no lost or doubled appends, no study settled twice).
"""

from __future__ import annotations

import threading

import pytest

from cds.demo_ehr import DemoEhr
from cds.demo_study import build_demo_ct_study
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from tests.conftest import free_port
from tests.fault.harness import Deployment, storescu, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]
HOOK_CALLS_PER_REPLICA = 12
OUTSIDE_APPENDS = 40
STUDIES_PER_GATEWAY = 2


def test_concurrent_appends_from_every_process_make_one_log(
    deployment: Deployment, fhir_server: LocalFhirServer
) -> None:
    with FhirClient(fhir_server.base_url) as client:
        load_synthetic_patients(client, generate_patients(1))
    ehr = DemoEhr.create(deployment.settings())
    deployment.env["VERITRACE_CDS_ISSUERS_FILE"] = str(ehr.issuers_file)
    deployment.env["VERITRACE_FHIR_BASE_URL"] = fhir_server.base_url
    api_ports = [free_port(), free_port()]
    dicom_ports = [free_port(), free_port()]
    for index, port in enumerate(api_ports):
        deployment.spawn(
            f"api-{index}", "api", api_port=str(port), public_base_url=f"http://127.0.0.1:{port}"
        )
    for index, port in enumerate(dicom_ports):
        deployment.spawn(f"dicom-{index}", "dicom", dicom_port=str(port))
    for port in api_ports:
        deployment.wait_http(f"http://127.0.0.1:{port}/healthz")
    for port in dicom_ports:
        deployment.wait_dicom(port)

    failures: list[str] = []

    def call_hooks(port: int) -> None:
        settings = deployment.settings(public_base_url=f"http://127.0.0.1:{port}")
        for _ in range(HOOK_CALLS_PER_REPLICA):
            try:
                ehr.call_patient_view(settings, "vt-demo-1", fhir_server.base_url)
            except Exception as exc:
                failures.append(f"hook on {port}: {type(exc).__name__}: {exc}")

    def send_studies(index: int, port: int) -> None:
        for study in range(STUDIES_PER_GATEWAY):
            paths = build_demo_ct_study(
                deployment.home / f"in-{index}-{study}", patient_id=f"vt-fault-cc-{index}", slices=2
            )
            sent = storescu(port, paths)
            if sent.returncode != 0:
                failures.append(f"storescu to {port}: {sent.stderr[-300:]}")

    def append_outside() -> None:
        ledger = deployment.ledger()
        for number in range(OUTSIDE_APPENDS):
            ledger.append("test.outside", "fault-test", {"n": number})

    threads = [threading.Thread(target=call_hooks, args=(port,)) for port in api_ports]
    threads += [threading.Thread(target=send_studies, args=(i, p)) for i, p in enumerate(dicom_ports)]
    threads.append(threading.Thread(target=append_outside))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures

    studies = STUDIES_PER_GATEWAY * len(dicom_ports)
    wait_until(
        lambda: deployment.ledger_kinds().count("analysis.queued") >= studies,
        timeout_s=60,
        what="every study settled",
    )
    ledger = deployment.ledger()
    entries = list(ledger.iter_entries())
    assert [entry.index for entry in entries] == list(range(ledger.size()))
    kinds = [entry.kind for entry in entries]
    assert kinds.count("cds.hook") == HOOK_CALLS_PER_REPLICA * len(api_ports)
    assert kinds.count("test.outside") == OUTSIDE_APPENDS
    assert sorted((e.payload or {}).get("n", -1) for e in entries if e.kind == "test.outside") == list(
        range(OUTSIDE_APPENDS)
    )
    assert kinds.count("study.stable") == studies  # two trackers, each study settled once
    assert kinds.count("analysis.queued") == studies
    assert kinds.count("dicom.received") == studies
    ledger.checkpoint()
    report = ledger.verify()
    assert report.ok, report
    assert report.size == len(entries)

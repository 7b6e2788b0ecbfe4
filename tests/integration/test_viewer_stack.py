"""The viewer's test stack, and tests of the stand-in EHR it runs against.

The stack is all real processes on localhost sockets: sekmet-fhir (the hospital's FHIR store, bearer
protected), the stand-in EHR from ``deploy/smart-ehr`` (oidc-provider as the SMART authorization
server + a token-checking FHIR gateway, Node 20), and the Veritrace API (create_app with the viewer
configured through settings, as ``veritrace api`` mounts it) under uvicorn. The draft report, its
trace, a DICOM instance in the spool, its ledger entry and a signed checkpoint are seeded; the card
(with its ``smart`` link) comes from a real ``patient-view`` call. Other viewer test modules import
``running_viewer_stack`` from here.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import uvicorn
from pydicom.data import get_testdata_file

from audit.keys import ensure_signing_key
from cds.demo_smart_ehr import SmartClient, SmartEhrConfig, running_smart_ehr
from cds.viewer import LaunchStore
from cds.viewer.sealed_secrets import SecretSealer
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer, free_port
from integrations.store.models import Analysis, Instance, Report, Study
from tests.integration.cds_support import JwtOffSettings, Store, hook_body, make_store, searchset

CLIENT_ID = "veritrace-viewer"
CLIENT_SECRET = secrets.token_urlsafe(24)
UPSTREAM_TOKEN = secrets.token_urlsafe(24)
PATIENT_VIEW = "/cds-services/veritrace-patient-view"


@dataclass
class ViewerStack:
    store: Store
    launch_store: LaunchStore
    ehr_url: str
    viewer_url: str
    fhir: LocalFhirServer
    patient: str
    other_patient: str
    report_id: str
    other_report_id: str
    card: dict[str, Any]
    evidence: dict[str, str] = field(default_factory=dict)
    other_observation: str = ""

    @property
    def iss(self) -> str:
        return f"{self.ehr_url}/fhir"

    def new_launch(self, patient: str, app_context: str | None = None) -> str:
        response = httpx.post(
            f"{self.ehr_url}/ehr/launches", json={"patient": patient, "appContext": app_context}
        )
        response.raise_for_status()
        launch: str = response.json()["launch"]
        return launch


def page_handle(html: str) -> str:
    """The session handle the callback page hands to its script."""
    match = re.search(r'<meta name="viewer-session" content="([^"]+)">', html)
    assert match, "the page carries no session handle"
    return match.group(1)


def _seed_fhir(client: FhirClient) -> dict[str, str]:
    patient = client.create({"resourceType": "Patient", "gender": "female", "birthDate": "1961-04-02"})
    other = client.create({"resourceType": "Patient", "gender": "male", "birthDate": "1950-01-01"})
    pid, oid = patient.resource_id, other.resource_id
    creatinine = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0", "display": "Creatinine"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2025-01-10",
        "valueQuantity": {"value": 1.4, "unit": "mg/dL"},
    }
    lab = client.create(creatinine)
    # A later correction: the draft cited version 1, the record now holds version 2.
    client.update({**lab.resource, "valueQuantity": {"value": 1.5, "unit": "mg/dL"}})
    med = client.create(
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Metformin 500 mg tablet"},
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": "2024-11-02",
        }
    )
    foreign = client.create({**creatinine, "subject": {"reference": f"Patient/{oid}"}})
    return {
        "patient": pid,
        "other": oid,
        "lab": lab.resource_id,
        "lab_version": str(lab.version_id),
        "med": med.resource_id,
        "med_version": str(med.version_id),
        "foreign": foreign.resource_id,
    }


def _evidence(
    item_id: str, resource_type: str, resource_id: str, version: str, display: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "version_id": version,
        "sha256": hashlib.sha256(item_id.encode()).hexdigest(),
        "display": display,
    }


def _seed_store(store: Store, spool_dir: Path, ids: dict[str, str]) -> tuple[str, str]:
    source = Path(str(get_testdata_file("CT_small.dcm")))
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    relative = f"{secrets.token_hex(4)}/ct.dcm"
    (spool_dir / relative).parent.mkdir(parents=True)
    shutil.copyfile(source, spool_dir / relative)
    image_id = f"img:{ds.SOPInstanceUID}:0"
    evidence = [
        _evidence(
            "ev-lab", "Observation", ids["lab"], ids["lab_version"], "Creatinine 1.4 mg/dL on 2025-01-10"
        ),
        _evidence(
            "ev-med", "MedicationRequest", ids["med"], ids["med_version"], "Metformin 500 mg tablet (active)"
        ),
    ]
    statements = [
        (
            "findings",
            {"text": "Creatinine 1.4 mg/dL on 2025-01-10", "severity": "minor", "citations": ["ev-lab"]},
            True,
            None,
        ),
        (
            "findings",
            {
                "text": "8 mm nodule in the right lower lobe",
                "severity": "moderate",
                "laterality": "right",
                "citations": [image_id],
            },
            True,
            None,
        ),
        (
            "findings",
            {
                "text": "Left pleural effusion",
                "severity": "moderate",
                "laterality": "left",
                "citations": [image_id],
            },
            False,
            "laterality_mismatch",
        ),
        (
            "impression",
            {
                "text": "Indeterminate nodule; patient on metformin",
                "severity": "moderate",
                "citations": [image_id, "ev-med"],
            },
            True,
            None,
        ),
    ]
    body = {
        "findings": [s for sec, s, ok, _ in statements if sec == "findings" and ok],
        "impression": [s for sec, s, ok, _ in statements if sec == "impression" and ok],
        "untrained_model": True,
    }
    identity = {
        "family": "qwen2_5_vl",
        "architecture": "Qwen2_5_VLForConditionalGeneration",
        "weights_sha256": hashlib.sha256(b"tiny").hexdigest(),
        "untrained": True,
    }
    verdicts = [
        {"section": sec, "index": i, "statement": s, "supported": ok, "reason": reason, "detail": ""}
        for i, (sec, s, ok, reason) in enumerate(statements)
    ]
    trace = {
        "version": 1,
        "model": identity,
        "evidence": evidence,
        "images": [
            {
                "study_uid": str(ds.StudyInstanceUID),
                "series_uid": str(ds.SeriesInstanceUID),
                "sop_uid": str(ds.SOPInstanceUID),
                "frame": 0,
            }
        ],
        "steps": [
            {"kind": "model", "at": "2025-01-11T08:00:00Z", "detail": identity},
            {
                "kind": "generation",
                "at": "2025-01-11T08:00:02Z",
                "detail": {"token_count": 120, "stopped": "eos"},
            },
            {"kind": "verification", "at": "2025-01-11T08:00:03Z", "detail": {"verdicts": verdicts}},
        ],
    }
    with store.session_factory() as session:
        study = Study(
            study_uid=str(ds.StudyInstanceUID), patient_id=ids["patient"], modality="CT", state="stable"
        )
        other_study = Study(
            study_uid=f"1.2.826.0.1.{secrets.randbelow(10**12)}", patient_id=ids["other"], state="stable"
        )
        session.add_all([study, other_study])
        session.flush()
        session.add(
            Instance(
                study_id=study.id,
                series_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                modality="CT",
                spool_path=relative,
                size_bytes=source.stat().st_size,
                sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            )
        )
        analysis = Analysis(
            study_id=study.id,
            content_digest=secrets.token_hex(8),
            status="completed",
            model_identity=identity,
            trace=trace,
        )
        other_analysis = Analysis(
            study_id=other_study.id, content_digest=secrets.token_hex(8), status="completed", trace={}
        )
        session.add_all([analysis, other_analysis])
        session.flush()
        report = Report(
            analysis_id=analysis.id,
            patient_id=ids["patient"],
            study_uid=study.study_uid,
            severity="moderate",
            summary="Indeterminate 8 mm right lower lobe nodule",
            body=body,
            markdown="# draft",
            untrained_model=True,
        )
        other = Report(
            analysis_id=other_analysis.id,
            patient_id=ids["other"],
            study_uid=other_study.study_uid,
            severity="minor",
            summary="Other patient's draft: mild degenerative change",
            body={
                "findings": [{"text": "Mild degenerative change", "citations": []}],
                "impression": [],
                "untrained_model": True,
            },
            markdown="# draft",
            untrained_model=True,
        )
        session.add_all([report, other])
        session.commit()
        report_id, other_id, study_uid = report.id, other.id, study.study_uid
    store.ledger.append(
        "report.drafted",
        "veritrace-worker",
        {"analysis_id": "seeded", "report_id": report_id, "severity": "moderate"},
        patient_ref=f"Patient/{ids['patient']}",
        study_uid=study_uid,
    )
    store.ledger.checkpoint()
    return report_id, other_id


@contextmanager
def _node_ehr(
    tmp_path: Path, upstream: LocalFhirServer, redirect_uri: str, standalone_patient: str
) -> Iterator[str]:
    config = SmartEhrConfig(
        port=free_port(),
        fhir_upstream=upstream.base_url,
        fhir_upstream_token=UPSTREAM_TOKEN,
        user="dr-viewer-test",
        standalone_patient=standalone_patient,
        clients=(SmartClient(CLIENT_ID, CLIENT_SECRET, (redirect_uri,)),),
    )
    with running_smart_ehr(config, tmp_path / "smart-ehr") as ehr:
        yield ehr.base_url


@contextmanager
def _uvicorn(app: Any, port: int) -> Iterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "the Veritrace API did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _patient_view_card(base_url: str, patient: str, report_id: str) -> dict[str, Any]:
    """The card as the EHR gets it, over HTTP (a TestClient would end the app's lifespan on exit)."""
    prefetch = {"finalReports": searchset(), "imagingStudies": searchset()}
    response = httpx.post(
        base_url + PATIENT_VIEW,
        json=hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": patient}, prefetch),
    )
    assert response.status_code == 200, response.text
    cards = [
        c
        for c in response.json()["cards"]
        if c["extension"].get("veritrace.report", {}).get("reportId") == report_id
    ]
    assert len(cards) == 1
    card: dict[str, Any] = cards[0]
    assert [link["type"] for link in card["links"]] == ["smart"], card["links"]
    return card


@contextmanager
def running_viewer_stack(tmp_path: Path, *, viewer_host: str = "127.0.0.1") -> Iterator[ViewerStack]:
    """The whole stack, seeded. ``viewer_host`` "localhost" puts the viewer on another site than the EHR."""
    from cds.app import create_app

    store = make_store(tmp_path)
    ensure_signing_key(store.ledger.config)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    viewer_port = free_port()
    viewer_url = f"http://{viewer_host}:{viewer_port}"
    with LocalFhirServer(tmp_path / "fhir", bearer_tokens=(UPSTREAM_TOKEN,)) as fhir:
        with FhirClient(fhir.base_url, token=UPSTREAM_TOKEN) as client:
            ids = _seed_fhir(client)
        report_id, other_id = _seed_store(store, spool_dir, ids)
        with _node_ehr(tmp_path, fhir, f"{viewer_url}/viewer/callback", ids["patient"]) as ehr_url:
            settings = JwtOffSettings(
                home=tmp_path,
                public_base_url=viewer_url,
                spool_dir=spool_dir,
                viewer_client_id=CLIENT_ID,
                viewer_client_secret=CLIENT_SECRET,
                viewer_allowed_issuers=[f"{ehr_url}/fhir"],
                viewer_frame_ancestors=[ehr_url],
            )
            app = create_app(settings, session_factory=store.session_factory, ledger=store.ledger)
            # Another handle on the app's launch state (the database, the key file it made): what a
            # second replica would see.
            launch_store = LaunchStore(
                store.session_factory,
                SecretSealer.from_key_or_file(None, tmp_path / "keys" / "viewer-session.key"),
                launch_ttl_s=600,
            )
            with _uvicorn(app, viewer_port):
                card = _patient_view_card(viewer_url, ids["patient"], report_id)
                yield ViewerStack(
                    store=store,
                    launch_store=launch_store,
                    ehr_url=ehr_url,
                    viewer_url=viewer_url,
                    fhir=fhir,
                    patient=ids["patient"],
                    other_patient=ids["other"],
                    report_id=report_id,
                    other_report_id=other_id,
                    card=card,
                    evidence={"lab": ids["lab"], "med": ids["med"]},
                    other_observation=ids["foreign"],
                )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStack]:
    with running_viewer_stack(tmp_path_factory.mktemp("viewer-stack")) as running:
        yield running


def _authorize(stack: ViewerStack, *, patient: str, verifier: str | None) -> httpx.Response:
    """Drive the EHR's authorize endpoint as the app would, stopping at the redirect to the viewer."""
    launch = stack.new_launch(patient)
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": f"{stack.viewer_url}/viewer/callback",
        "scope": "launch openid fhirUser patient/Observation.rs",
        "state": secrets.token_urlsafe(16),
        "aud": stack.iss,
        "launch": launch,
    }
    if verifier is not None:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    with httpx.Client(base_url=stack.ehr_url) as browser:
        response = browser.get("/auth", params=params)
        while response.status_code in (302, 303) and not response.headers["location"].startswith(
            stack.viewer_url
        ):
            response = browser.get(response.headers["location"])
    return response


def _code_of(response: httpx.Response) -> str:
    location = httpx.URL(response.headers["location"])
    return str(location.params["code"])


def test_stand_in_ehr_requires_pkce_at_authorization(stack: ViewerStack) -> None:
    response = _authorize(stack, patient=stack.patient, verifier=None)
    location = httpx.URL(response.headers["location"])
    assert location.params.get("error") == "invalid_request"
    assert "PKCE" in location.params.get("error_description", "")


def test_stand_in_ehr_refuses_a_code_without_its_verifier(stack: ViewerStack) -> None:
    verifier = secrets.token_urlsafe(48)
    code = _code_of(_authorize(stack, patient=stack.patient, verifier=verifier))
    token_request = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": f"{stack.viewer_url}/viewer/callback",
    }
    missing = httpx.post(f"{stack.ehr_url}/token", data=token_request, auth=(CLIENT_ID, CLIENT_SECRET))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant"
    # The code was burnt by the failed attempt, as RFC 6749 §4.1.2 asks: a fresh one with the verifier works.
    code = _code_of(_authorize(stack, patient=stack.patient, verifier=verifier))
    token = httpx.post(
        f"{stack.ehr_url}/token",
        data={**token_request, "code": code, "code_verifier": verifier},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert token.status_code == 200, token.text
    assert token.json()["patient"] == stack.patient


def test_fhir_gateway_checks_token_and_patient_compartment(stack: ViewerStack) -> None:
    verifier = secrets.token_urlsafe(48)
    code = _code_of(_authorize(stack, patient=stack.patient, verifier=verifier))
    token = httpx.post(
        f"{stack.ehr_url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": f"{stack.viewer_url}/viewer/callback",
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
    ).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    own = httpx.get(f"{stack.iss}/Observation/{stack.evidence['lab']}", headers=bearer)
    assert own.status_code == 200 and own.json()["valueQuantity"]["value"] == 1.5
    assert httpx.get(f"{stack.iss}/Observation/{stack.other_observation}", headers=bearer).status_code == 403
    assert (
        httpx.get(f"{stack.iss}/MedicationRequest/{stack.evidence['med']}", headers=bearer).status_code == 403
    )  # scope
    assert httpx.get(f"{stack.iss}/Observation/{stack.evidence['lab']}").status_code == 401
    assert (
        httpx.get(f"{stack.fhir.base_url}/Observation/{stack.evidence['lab']}").status_code == 401
    )  # upstream closed

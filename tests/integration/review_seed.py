"""Seed data for the review app tests, written as the worker and the CDS service write it.

Analyses get the trace and report shapes of ``integrations/analysis/pipeline.py`` (plus the verifier's
verdicts), cards and feedback the shapes of ``cds``, and the ledger the entries those pieces append;
then the ledger signs a checkpoint. Nothing is mocked: a real store (SQLite or PostgreSQL) and a real
ledger with a real Ed25519 key.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger, LedgerConfig
from audit.keys import ensure_signing_key
from audit.review import ReviewConfig, Role, build_review_router, hash_password
from integrations.analysis.pipeline import report_body
from integrations.dicom.spool import Spool
from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.migrate import upgrade_database
from integrations.store.models import Analysis, AnalysisInstance, Card, Feedback, Instance, Report, Study
from integrations.store.review_source import SqlTraceSource
from model.report import DraftReport, Severity, Statement
from model.verification import VerifiedReport
from model.verification.verdict import RejectionReason, StatementVerdict

WEIGHTS_A = "a1" * 32
WEIGHTS_B = "b2" * 32
PASSWORD = "correct horse battery staple"
LOCAL_USERS = {
    "officer": ["compliance-officer"],
    "radiologist": ["radiologist"],
    "admin": ["admin"],
    "nobody": [],
}


CT_SMALL = Path(get_testdata_file("CT_small.dcm") or "")
CT_SMALL_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
CT_SMALL_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"


@dataclass
class SeededStore:
    session_factory: sessionmaker[Session]
    ledger: Ledger
    spool_dir: Path
    analyses: dict[str, str] = field(default_factory=dict)
    """name -> analysis id"""


def identity(weights: str) -> dict[str, Any]:
    return {
        "family": "qwen2_5_vl",
        "architecture": "Qwen2_5_VLForConditionalGeneration",
        "model_type": "qwen2_5_vl",
        "weights_sha256": weights,
        "dtype": "float32",
        "attention": "sdpa",
        "device": "cpu",
        "parameter_count": 123456,
        "untrained": True,
    }


def _trace(analysis_id: str, study_uid: str, weights: str, at: datetime) -> dict[str, Any]:
    evidence = [
        {
            "id": "ev1",
            "resource_type": "Observation",
            "resource_id": "crp-1",
            "version_id": "3",
            "sha256": "c" * 64,
            "display": "C-reactive protein 91.0 mg/L (2025-11-01)",
        },
        {
            "id": "ev2",
            "resource_type": "Condition",
            "resource_id": "copd",
            "version_id": "1",
            "sha256": "d" * 64,
            "display": "Chronic obstructive pulmonary disease",
        },
    ]
    images = [
        {"study_uid": study_uid, "series_uid": study_uid + ".1", "sop_uid": study_uid + ".1.1", "frame": 0}
    ]
    steps = [
        {"kind": "model", "at": at.isoformat(), "detail": identity(weights)},
        {
            "kind": "prompt",
            "at": (at + timedelta(milliseconds=5)).isoformat(),
            "detail": {"prompt_sha256": "e" * 64, "evidence_ids": ["ev1", "ev2"], "images": images},
        },
        {
            "kind": "tool_call",
            "at": (at + timedelta(milliseconds=40)).isoformat(),
            "detail": {"tool": "labs_by_loinc", "arguments": {"loinc": "1988-5"}, "evidence_ids": ["ev1"]},
        },
        {"kind": "generation", "at": (at + timedelta(seconds=2)).isoformat(), "detail": {"token_count": 80}},
        {"kind": "citations", "at": (at + timedelta(seconds=2)).isoformat(), "detail": {"dropped": []}},
    ]
    return {
        "version": 1,
        "analysis_id": analysis_id,
        "model": identity(weights),
        "prompt_sha256": "e" * 64,
        "evidence": evidence,
        "images": images,
        "steps": steps,
        "report": {},
        "elapsed_s": 2.5,
    }


def _body(rejected: bool) -> dict[str, Any]:
    """The report body exactly as the worker stores it, from real verifier types."""
    supported = Statement(
        text="CRP 91.0 mg/L supports an inflammatory process", severity=Severity.MODERATE, citations=["ev1"]
    )
    wrong = Statement(text="CRP 19.0 mg/L, within normal limits", citations=["ev1"])
    verdicts = [StatementVerdict(section="findings", index=0, statement=supported, supported=True)]
    if rejected:
        verdicts.append(
            StatementVerdict(
                section="findings",
                index=1,
                statement=wrong,
                supported=False,
                reason=RejectionReason.NUMBER_MISMATCH,
                detail="states 19.0, evidence ev1 has 91.0",
            )
        )
    kept = DraftReport(findings=[supported], untrained_model=True)
    return report_body(VerifiedReport(report=kept, verdicts=verdicts))


def seed(tmp_path: Path, database_url: str | None = None, *, extra: int = 0) -> SeededStore:
    """Three named analyses (plus ``extra`` filler ones for paging), feedback, hook calls, a checkpoint."""
    engine = make_engine(StoreConfig(database_url=database_url or f"sqlite:///{tmp_path / 'review.db'}"))
    upgrade_database(engine)
    config = LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=tmp_path / "anchor", checkpoint_every=10_000)
    ensure_signing_key(config)
    ledger = Ledger(engine, config)
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    shutil.copyfile(CT_SMALL, spool / "ct_small.dcm")
    store = SeededStore(make_session_factory(engine), ledger, spool)
    now = datetime.now(UTC)
    plan = [
        ("overridden", "pat-1001", WEIGHTS_A, True, "overridden", now - timedelta(days=1)),
        ("accepted", "pat-1002", WEIGHTS_A, False, "accepted", now - timedelta(days=2)),
        ("no-feedback", "pat-1003", WEIGHTS_B, False, None, now - timedelta(days=9)),
    ]
    plan += [
        (f"filler-{i}", f"pat-2{i:03d}", WEIGHTS_B, False, None, now - timedelta(days=20, minutes=i))
        for i in range(extra)
    ]
    for name, patient, weights, rejected, outcome, at in plan:
        store.analyses[name] = _seed_analysis(store, patient, weights, rejected, outcome, at)
    _spool_image_of(store, store.analyses["overridden"])
    ledger.checkpoint()
    return store


def _seed_analysis(
    store: SeededStore, patient: str, weights: str, rejected: bool, outcome: str | None, at: datetime
) -> str:
    study_uid = f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**12}"
    with store.session_factory() as session:
        study = Study(study_uid=study_uid, patient_id=patient, modality="CR", state="stable")
        session.add(study)
        session.flush()
        analysis = Analysis(
            study_id=study.id,
            content_digest=uuid.uuid4().hex,
            status="completed",
            queued_at=at,
            started_at=at,
            completed_at=at + timedelta(seconds=3),
            attempts=1,
            model_identity=identity(weights),
        )
        session.add(analysis)
        session.flush()
        analysis.trace = _trace(analysis.id, study_uid, weights, at)
        body = _body(rejected)
        report = Report(
            analysis_id=analysis.id,
            patient_id=patient,
            study_uid=study_uid,
            severity="moderate",
            summary="CRP raised",
            body=body,
            markdown="# Draft\n\nCRP 91.0 mg/L supports an inflammatory process",
            untrained_model=True,
        )
        session.add(report)
        session.flush()
        analysis_id, report_id = analysis.id, report.id
        card_uuid = str(uuid.uuid4())
        session.add(
            Card(
                uuid=card_uuid,
                service_id="veritrace-imaging-results",
                hook_instance=str(uuid.uuid4()),
                patient_id=patient,
                report_id=report_id,
                payload={"uuid": card_uuid, "summary": "CRP raised", "suggestions": []},
            )
        )
        if outcome:
            session.add(
                Feedback(
                    card_uuid=card_uuid,
                    service_id="veritrace-imaging-results",
                    outcome=outcome,
                    override_reason={"reason": {"code": "disagree-with-finding", "display": "Disagree"}}
                    if outcome == "overridden"
                    else None,
                    accepted_suggestions=["s1"] if outcome == "accepted" else None,
                    outcome_timestamp=at + timedelta(hours=1),
                )
            )
        session.commit()
    ref = f"Patient/{patient}"
    ledger = store.ledger
    ledger.append(
        "analysis.started",
        "veritrace-worker",
        {"analysis_id": analysis_id, "instances": 1},
        study_uid=study_uid,
    )
    ledger.append(
        "model.invoked",
        "veritrace-worker",
        {"analysis_id": analysis_id, "model": identity(weights), "prompt_sha256": "e" * 64},
        patient_ref=ref,
        study_uid=study_uid,
    )
    ledger.append(
        "report.drafted",
        "veritrace-worker",
        {"analysis_id": analysis_id, "report_id": report_id, "model": {"name": "tiny-qwen"}, "statements": 1},
        patient_ref=ref,
        study_uid=study_uid,
    )
    ledger.append(
        "cds.hook",
        "cds-client:https://ehr.example/",
        {
            "service": "veritrace-imaging-results",
            "hook": "patient-view",
            "hookInstance": "h",
            "status": 200,
            "cards": 1,
            "latencyMs": 4.2,
        },
        patient_ref=ref,
    )
    if outcome:
        ledger.append(
            "cds.feedback",
            "cds-client:https://ehr.example/",
            {
                "service": "veritrace-imaging-results",
                "card": card_uuid,
                "outcome": outcome,
                "reportId": report_id,
            },
            patient_ref=ref,
        )
    return analysis_id


def _spool_image_of(store: SeededStore, analysis_id: str) -> None:
    """Make the analysis's first image a real spooled CT frame (pydicom's CT_small), for thumbnails."""
    with store.session_factory() as session:
        analysis = session.get(Analysis, analysis_id)
        assert analysis is not None and analysis.trace is not None
        instance = Instance(
            study_id=analysis.study_id,
            series_uid=CT_SMALL_SERIES,
            sop_instance_uid=CT_SMALL_SOP,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            spool_path="ct_small.dcm",
            size_bytes=CT_SMALL.stat().st_size,
            sha256=hashlib.sha256(CT_SMALL.read_bytes()).hexdigest(),
        )
        session.add(instance)
        session.flush()
        session.add(AnalysisInstance(analysis_id=analysis_id, instance_id=instance.id))
        trace = dict(analysis.trace)
        trace["images"] = [
            {"study_uid": "x", "series_uid": CT_SMALL_SERIES, "sop_uid": CT_SMALL_SOP, "frame": 0}
        ]
        analysis.trace = trace
        session.commit()


def write_local_users(tmp_path: Path) -> Path:
    path = tmp_path / "review-users.json"
    hashed = hash_password(PASSWORD)
    users = [
        {"username": u, "name": u.title(), "roles": roles, "password": hashed}
        for u, roles in LOCAL_USERS.items()
    ]
    path.write_text(json.dumps({"users": users}))
    return path


def review_app(store: SeededStore, config: ReviewConfig) -> FastAPI:
    """A small app with only the review router: what ``cds.app`` mounts, without the CDS routes."""
    app = FastAPI()
    source = SqlTraceSource(store.session_factory, Spool(store.spool_dir))
    app.include_router(build_review_router(source, store.ledger, config))
    return app


USER_FOR_ROLE = {Role.COMPLIANCE_OFFICER: "officer", Role.RADIOLOGIST: "radiologist", Role.ADMIN: "admin"}


def sign_in(app: Any, role: Role) -> tuple[TestClient, str]:
    """A client with its own cookie jar, signed in through the local form; and its session's CSRF token."""
    client = TestClient(app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/review/login").text)
    assert token is not None
    response = client.post(
        "/review/login/local",
        data={"username": USER_FOR_ROLE[role], "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and "error" not in response.headers["location"]
    csrf = re.search(r'data-csrf="([^"]+)"', client.get("/review/model-card").text)
    assert csrf is not None
    return client, csrf.group(1)

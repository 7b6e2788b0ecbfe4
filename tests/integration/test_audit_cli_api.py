"""`veritrace audit` commands and the /audit HTTP API over a real SQLite ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from audit import Ledger, LedgerConfig, upgrade_ledger_schema
from audit.api import build_audit_router
from audit.cli import build_audit_cli
from audit.proof_types import ConsistencyProof, InclusionProof

runner = CliRunner()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade_ledger_schema(engine)
    return Ledger(engine, LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=tmp_path / "anchor"))


def _cli(ledger: Ledger) -> typer.Typer:
    return build_audit_cli(lambda: ledger, lambda: ledger.config)


def _populate(ledger: Ledger) -> None:
    kinds = ["dicom.received", "fhir.read", "fhir.search", "model.invoked", "report.drafted", "cds.hook"]
    for i, kind in enumerate(kinds * 3):
        ledger.append(
            kind,
            "worker:io",
            {"resource": f"Observation/{i}", "report_ref": "DiagnosticReport/7", "model": {"name": "tiny"}},
            patient_ref="Patient/p1",
            study_uid="1.2.840.1",
        )


def test_keygen_checkpoint_verify_then_a_manual_edit_is_named(ledger: Ledger) -> None:
    app = _cli(ledger)
    result = runner.invoke(app, ["keygen"])
    assert result.exit_code == 0 and result.output.startswith("veritrace.local/ledger+")
    assert runner.invoke(app, ["keygen"]).exit_code == 2  # refuses to overwrite
    _populate(ledger)
    result = runner.invoke(app, ["checkpoint"])
    assert result.exit_code == 0 and result.output.splitlines()[1] == "18"
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 0 and result.output.startswith("OK: 18 entries")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_entries_no_update")
        conn.exec_driver_sql("UPDATE audit_entries SET actor = 'mallory' WHERE leaf_index = 11")
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 1 and "first bad index 11" in result.output


def test_prove_and_consistency_print_verifiable_json(ledger: Ledger) -> None:
    app = _cli(ledger)
    runner.invoke(app, ["keygen"])
    _populate(ledger)
    runner.invoke(app, ["checkpoint"])
    result = runner.invoke(app, ["prove", "5"])
    assert result.exit_code == 0
    proof = InclusionProof.model_validate_json(result.output)
    assert proof.size == 18
    proof.verify()
    result = runner.invoke(app, ["consistency", "3", "18"])
    ConsistencyProof.model_validate_json(result.output).verify()
    assert runner.invoke(app, ["prove", "18"]).exit_code == 2
    assert runner.invoke(app, ["consistency", "9", "3"]).exit_code == 2
    assert runner.invoke(app, ["prove", "nope"]).exit_code == 2


def test_export_is_a_valid_fhir_r4_bundle_with_balp_profiles(ledger: Ledger, tmp_path: Path) -> None:
    _populate(ledger)
    out = tmp_path / "bundle.json"
    result = runner.invoke(_cli(ledger), ["export", "--output", str(out)])
    assert result.exit_code == 0
    data = json.loads(out.read_text())
    Bundle.model_validate(data)
    resources = [e["resource"] for e in data["entry"]]
    profiles = {
        r["id"]: r.get("meta", {}).get("profile", [None])[0]
        for r in resources
        if r["resourceType"] == "AuditEvent"
    }
    base = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
    assert profiles["ledger-0"] == base + "PatientCreate"
    assert profiles["ledger-1"] == base + "PatientRead"
    assert profiles["ledger-2"] == base + "PatientQuery"
    assert profiles["ledger-3"] is None  # model.invoked: application activity, no patient profile claimed
    provenance = [r for r in resources if r["resourceType"] == "Provenance"]
    assert len(provenance) == 3 and provenance[0]["target"] == [{"reference": "DiagnosticReport/7"}]
    read = next(r for r in resources if r["id"] == "ledger-1" and r["resourceType"] == "AuditEvent")
    assert read["action"] == "R" and read["entity"][0]["what"] == {"reference": "Patient/p1"}
    assert {"type": "leaf-hash", "valueString": ledger.entry(1).leaf_hash} in read["entity"][1]["detail"]


def test_http_api_serves_checkpoint_entries_proofs_and_keys(ledger: Ledger) -> None:
    app = FastAPI()
    app.include_router(build_audit_router(lambda: ledger))
    client = TestClient(app)
    assert client.get("/audit/checkpoint").status_code == 404
    runner.invoke(_cli(ledger), ["keygen"])
    _populate(ledger)
    checkpoint = ledger.checkpoint()
    ledger.append("cds.feedback", "cds-client:ehr", {"outcome": "accepted"})  # after the checkpoint

    body = client.get("/audit/checkpoint").json()
    assert (
        body["size"] == 18
        and body["root_hash"] == checkpoint.root_hash.hex()
        and body["note"] == checkpoint.note
    )

    body = client.get("/audit/entries/4").json()
    assert body["entry"]["kind"] == "report.drafted"
    proof = InclusionProof.model_validate(body["inclusion_proof"])
    assert proof.size == 18 and proof.root_hash == checkpoint.root_hash
    proof.verify()
    assert client.get("/audit/entries/18").json()["inclusion_proof"] is None  # not yet checkpointed

    missing = client.get("/audit/entries/99")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/fhir+json")
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert client.get("/audit/entries/-1").status_code == 400

    ConsistencyProof.model_validate(
        client.get("/audit/consistency", params={"from": 5, "to": 18}).json()
    ).verify()
    bad = client.get("/audit/consistency", params={"from": 18, "to": 5})
    assert bad.status_code == 400 and bad.json()["issue"][0]["code"] == "invalid"

    keys = client.get("/audit/public-key").json()
    assert (
        keys["algorithm"] == "Ed25519"
        and keys["key_id"] == checkpoint.key_id
        and keys["vkey"] in keys["all_vkeys"]
    )

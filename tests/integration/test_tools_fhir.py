"""FHIR tools through the registry, against a real sekmet-fhir loaded with the synthetic patients."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from integrations.fhir import codes
from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from integrations.tools.fhir_tools import fhir_tools
from model.report import DraftReport, Statement
from model.tools import ToolRegistry
from model.verification import RejectionReason, verify_report

PATIENTS = {p.patient_id: p for p in generate_patients()}
EGFR = codes.LABS["eGFR"].loinc


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirClient]:
    """A FHIR server of this module's own: the tests assert exact result sets, and other tests write
    reports for the same synthetic patients on the shared session server."""
    with (
        LocalFhirServer(tmp_path_factory.mktemp("fhir-tools")) as server,
        FhirClient(server.base_url) as client,
    ):
        load_synthetic_patients(client, list(PATIENTS.values()))
        yield client


@pytest.fixture
def registry(loaded: FhirClient) -> Iterator[ToolRegistry]:
    yield ToolRegistry("vt-demo-1", fhir_tools(loaded))


def ids_of(outcome: Any) -> set[str]:
    return {item["id"].split("/_history/")[0] for item in outcome.result.content["items"]}


def expected(patient: str, resource_type: str, **match: Any) -> set[str]:
    return {
        f"{resource_type}/{r['id']}"
        for r in PATIENTS[patient].of_type(resource_type)
        if all(r.get(k) == v for k, v in match.items())
    }


def test_demographics(registry: ToolRegistry) -> None:
    outcome = registry.call("patient_demographics", {"patient_id": "vt-demo-1"})
    assert outcome.ok, outcome.error
    assert ids_of(outcome) == {"Patient/vt-demo-1"}
    (item,) = outcome.result.evidence  # type: ignore[union-attr]
    assert item.version_id and item.last_updated and len(item.sha256) == 64
    assert "Demo-Kidney" not in outcome.for_model()  # the name never reaches the model


def test_active_conditions_leave_out_resolved_ones(registry: ToolRegistry) -> None:
    outcome = registry.call("active_conditions", {"patient_id": "vt-demo-1"})
    assert outcome.ok, outcome.error
    active = {
        f"Condition/{r['id']}"
        for r in PATIENTS["vt-demo-1"].of_type("Condition")
        if r["clinicalStatus"]["coding"][0]["code"] == "active"
    }
    assert ids_of(outcome) == active and len(active) == 3


def test_labs_by_loinc_with_trend_and_date_range(registry: ToolRegistry) -> None:
    series = sorted(
        (o for o in PATIENTS["vt-demo-1"].of_type("Observation") if o["code"]["coding"][0]["code"] == EGFR),
        key=lambda o: o["effectiveDateTime"],
    )
    outcome = registry.call("lab_results", {"patient_id": "vt-demo-1", "loinc": EGFR})
    assert outcome.ok, outcome.error
    assert ids_of(outcome) == {f"Observation/{o['id']}" for o in series}
    trend = outcome.result.content["trend"]  # type: ignore[union-attr]
    first, last = series[0]["valueQuantity"]["value"], series[-1]["valueQuantity"]["value"]
    assert Decimal(trend["first"]["value"]) == Decimal(str(first))
    assert Decimal(trend["last"]["value"]) == Decimal(str(last))
    assert trend["direction"] == "falling" and trend["count"] == len(series)

    since = series[-2]["effectiveDateTime"][:10]
    recent = registry.call("lab_results", {"patient_id": "vt-demo-1", "loinc": EGFR, "since": since})
    assert ids_of(recent) == {f"Observation/{o['id']}" for o in series[-2:]}


def test_vitals_medications_allergies_prior_imaging(registry: ToolRegistry) -> None:
    vitals = registry.call("vital_signs", {"patient_id": "vt-demo-1", "limit": 50})
    assert ids_of(vitals) == {
        f"Observation/{o['id']}"
        for o in PATIENTS["vt-demo-1"].of_type("Observation")
        if o["category"][0]["coding"][0]["code"] == "vital-signs"
    }
    assert ids_of(registry.call("medications", {"patient_id": "vt-demo-1"})) == expected(
        "vt-demo-1", "MedicationRequest", status="active"
    )
    assert ids_of(registry.call("allergies", {"patient_id": "vt-demo-1"})) == expected(
        "vt-demo-1", "AllergyIntolerance"
    )
    imaging = registry.call("prior_imaging", {"patient_id": "vt-demo-1"})
    assert ids_of(imaging) == expected("vt-demo-1", "DiagnosticReport") | expected(
        "vt-demo-1", "ImagingStudy"
    )


def test_procedures_of_a_fresh_patient(loaded: FhirClient) -> None:
    pid = f"vt-tools-{secrets.token_hex(4)}"
    loaded.update({"resourceType": "Patient", "id": pid, "gender": "other"})
    done = loaded.create(
        {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {"text": "Appendectomy"},
            "subject": {"reference": f"Patient/{pid}"},
            "performedDateTime": "2020-05-01",
        }
    ).resource
    outcome = ToolRegistry(pid, fhir_tools(loaded)).call("procedures", {"patient_id": pid})
    assert ids_of(outcome) == {f"Procedure/{done['id']}"}
    empty = ToolRegistry(pid, fhir_tools(loaded)).call(
        "procedures", {"patient_id": pid, "until": "2019-12-31"}
    )
    assert empty.ok and empty.result.content["count"] == 0  # type: ignore[union-attr]


def test_another_patient_is_refused_even_when_it_exists(registry: ToolRegistry) -> None:
    outcome = registry.call("allergies", {"patient_id": "vt-demo-2"})
    assert not outcome.ok and outcome.error_kind == "patient_scope"
    assert outcome.result is None and registry.evidence() == []
    assert "Gadolinium" not in outcome.for_model()


def test_tool_results_feed_the_verifier(registry: ToolRegistry) -> None:
    outcome = registry.call("lab_results", {"patient_id": "vt-demo-1", "loinc": EGFR, "limit": 1})
    (item,) = outcome.result.evidence  # type: ignore[union-attr]
    (latest,) = [o for o in PATIENTS["vt-demo-1"].of_type("Observation") if o["id"] == item.resource_id]
    value = f"{latest['valueQuantity']['value']:g}"
    good = Statement(text=f"eGFR {value} mL/min/1.73m2.", citations=[item.id])
    bad = Statement(text=f"eGFR {float(value) + 10:g} mL/min/1.73m2.", citations=[item.id])
    other = Statement(text=f"eGFR {value} mL/min/1.73m2.", citations=["Observation/vt-demo-2-lab-1"])
    verified = verify_report(
        DraftReport(findings=[good, bad, other], untrained_model=True),
        registry.evidence(),
        registry.image_refs(),
        registry.facts(),
    )
    assert [v.reason for v in verified.verdicts] == [
        None,
        RejectionReason.NUMBER_MISMATCH,
        RejectionReason.UNKNOWN_CITATION,
    ]

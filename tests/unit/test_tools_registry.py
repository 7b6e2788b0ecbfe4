"""The tool registry: schemas, validation, patient scope, budget, errors as results, evidence kept."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from pydantic import Field

from integrations.fhir.client import FhirClient
from integrations.tools.fhir_tools import fhir_tools
from model.report import EvidenceItem, ImageRef
from model.tools import PatientScope, PatientScopedArguments, Tool, ToolFailure, ToolRegistry, ToolResult
from model.verification import EvidenceFacts


class EchoArguments(PatientScopedArguments):
    word: str = Field(max_length=10)


def echo(scope: PatientScope, args: EchoArguments) -> ToolResult:
    if args.word == "fail":
        raise ToolFailure("nothing found")
    if args.word == "crash":
        raise RuntimeError("infrastructure down")
    item = EvidenceItem(
        id=f"Basic/{scope.patient_id}-{args.word}",
        resource_type="Basic",
        resource_id=f"{scope.patient_id}-{args.word}",
        sha256=hashlib.sha256(args.word.encode()).hexdigest(),
        display=args.word,
    )
    ref = ImageRef(study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4")
    return ToolResult(
        content={"patient": scope.patient_id, "word": args.word},
        evidence=[item],
        facts={item.id: EvidenceFacts(resource_type="Basic", names=[args.word])},
        image_refs=[ref],
    )


ECHO = Tool("echo", "Echo a word.", EchoArguments, echo)


def test_schema_is_the_pydantic_json_schema() -> None:
    (schema,) = ToolRegistry("p1", [ECHO]).schemas()
    assert schema["name"] == "echo" and schema["description"] == "Echo a word."
    params = schema["parameters"]
    assert set(params["required"]) == {"patient_id", "word"}
    assert params["additionalProperties"] is False
    assert params["properties"]["word"]["maxLength"] == 10


def test_call_returns_content_and_keeps_evidence() -> None:
    registry = ToolRegistry("p1", [ECHO])
    outcome = registry.call("echo", '{"patient_id": "p1", "word": "hi"}')
    assert outcome.ok and json.loads(outcome.for_model()) == {"patient": "p1", "word": "hi"}
    registry.call("echo", {"patient_id": "p1", "word": "ho"})
    assert [e.id for e in registry.evidence()] == ["Basic/p1-hi", "Basic/p1-ho"]
    assert set(registry.facts()) == {"Basic/p1-hi", "Basic/p1-ho"}
    assert [r.citation_id for r in registry.image_refs()] == ["img:1.2.3.4:0"]


@pytest.mark.parametrize(
    ("name", "arguments", "kind"),
    [
        ("nope", {"patient_id": "p1"}, "unknown_tool"),
        ("echo", {"patient_id": "p1"}, "invalid_arguments"),
        ("echo", {"patient_id": "p1", "word": "x", "extra": 1}, "invalid_arguments"),
        ("echo", {"patient_id": "p1", "word": "far too long a word"}, "invalid_arguments"),
        ("echo", {"patient_id": "../p2", "word": "x"}, "invalid_arguments"),
        ("echo", "{not json", "invalid_arguments"),
        ("echo", "[1, 2]", "invalid_arguments"),
        ("echo", {"patient_id": "p2", "word": "x"}, "patient_scope"),
        ("echo", {"patient_id": "p1", "word": "fail"}, "tool_failed"),
    ],
)
def test_errors_come_back_as_results(name: str, arguments: Any, kind: str) -> None:
    registry = ToolRegistry("p1", [ECHO])
    outcome = registry.call(name, arguments)
    assert not outcome.ok and outcome.error_kind == kind and outcome.result is None
    assert json.loads(outcome.for_model())["error"] == kind
    assert registry.evidence() == [] and registry.outcomes == [outcome]


def test_infrastructure_errors_propagate() -> None:
    with pytest.raises(RuntimeError, match="infrastructure"):
        ToolRegistry("p1", [ECHO]).call("echo", {"patient_id": "p1", "word": "crash"})


def test_budget_counts_every_call_and_refuses_beyond() -> None:
    registry = ToolRegistry("p1", [ECHO], max_calls=2)
    assert registry.call("echo", {"patient_id": "p2", "word": "x"}).error_kind == "patient_scope"
    assert registry.call("echo", {"patient_id": "p1", "word": "x"}).ok
    over = registry.call("echo", {"patient_id": "p1", "word": "y"})
    assert over.error_kind == "budget" and len(registry.outcomes) == 3


def test_bad_registrations() -> None:
    with pytest.raises(ValueError, match="two tools"):
        ToolRegistry("p1", [ECHO, ECHO])
    with pytest.raises(ValueError, match="snake_case"):
        Tool("Echo Tool", "x", EchoArguments, echo)
    with pytest.raises(ValueError, match="max_calls"):
        ToolRegistry("p1", [ECHO], max_calls=0)


def test_the_fhir_tools_withhold_a_resource_of_another_patient() -> None:
    """A misbehaving server (simulated: the real one filters correctly) returns another patient's allergy."""
    foreign = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "patient": {"reference": "Patient/someone-else"},
        "code": {"text": "Penicillin"},
    }
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": foreign}]}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=bundle))
    with FhirClient("http://fhir.invalid/r4", transport=transport) as client:
        outcome = ToolRegistry("p1", fhir_tools(client)).call("allergies", {"patient_id": "p1"})
    assert outcome.error_kind == "tool_failed" and "Penicillin" not in outcome.for_model()


def test_fhir_tool_schemas_validate_loinc_and_ranges() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(500))
    with FhirClient("http://fhir.invalid/r4", transport=transport) as client:
        registry = ToolRegistry("p1", fhir_tools(client))
        assert {"lab_results", "vital_signs", "prior_imaging", "procedures"} <= set(registry.names)
        bad_code = registry.call("lab_results", {"patient_id": "p1", "loinc": "2160-0&patient=p2"})
        backwards = registry.call(
            "lab_results",
            {"patient_id": "p1", "loinc": "2160-0", "since": "2026-02-01", "until": "2026-01-01"},
        )
    assert bad_code.error_kind == "invalid_arguments" and backwards.error_kind == "invalid_arguments"

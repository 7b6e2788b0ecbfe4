"""The agent end to end over a real FHIR server: a tiny random Qwen2.5-VL choosing its own calls, and a
scripted stand-in (see ``tests/unit/test_agent_loop.py``) for the choices an untrained model cannot be
made to take (asking about another patient, citing a lab it read).

The FHIR server is this module's own: the assertions name exact resources, and other tests write reports
for the same synthetic patients on the shared session server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydicom.data import get_testdata_file

from integrations.fhir import codes
from integrations.fhir.client import FhirClient
from integrations.fhir.patient_record import read_patient_record
from integrations.fhir.server import LocalFhirServer
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients
from integrations.tools.fhir_tools import fhir_tools
from integrations.tools.icd10cm import icd10cm_tools
from model.agent import WRITE_REPORT, parse_action, run_agent
from model.config import ModelConfig
from model.context import PatientContext
from model.draft import DraftResult
from model.imaging import ModelImage, load_model_image
from model.runtime import LoadedVlm, load_vlm
from model.tiny import make_tiny
from model.tools import ToolRegistry
from model.verification import verify_report
from tests.unit.test_agent_loop import ScriptedModel

torch.set_num_threads(1)  # the CI box is shared; one thread per tiny model is faster under contention

PATIENT = "vt-demo-1"
CREATININE = codes.LABS["creatinine"].loinc
SEEDS = (1, 2, 3)  # three random models: between them they call labs, fail a lookup, read allergies
MODEL_MISTAKES = {"invalid_arguments", "unknown_tool", "patient_scope"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirClient]:
    with (
        LocalFhirServer(tmp_path_factory.mktemp("agent-fhir")) as server,
        FhirClient(server.base_url) as fhir,
    ):
        load_synthetic_patients(fhir, generate_patients())
        yield fhir


@pytest.fixture(scope="module")
def vlms(tmp_path_factory: pytest.TempPathFactory) -> list[LoadedVlm]:
    root = tmp_path_factory.mktemp("agent-models")
    return [
        load_vlm(
            ModelConfig(
                path=make_tiny("qwen2_5_vl", root / f"q{seed}", seed=seed),
                device="cpu",
                max_new_tokens=256,
                max_images=2,
            )
        )
        for seed in SEEDS
    ]


@pytest.fixture(scope="module")
def images() -> list[ModelImage]:
    return [load_model_image(Path(str(get_testdata_file("CT_small.dcm"))), preset="lung")]


def context_of(client: FhirClient, patient_id: str = PATIENT) -> PatientContext:
    return PatientContext(
        patient_id=patient_id, evidence=read_patient_record(client, patient_id).to_evidence()
    )


def registry_for(client: FhirClient, patient_id: str = PATIENT) -> ToolRegistry:
    return ToolRegistry(patient_id, [*fhir_tools(client), *icd10cm_tools()])


def details(result: DraftResult, kind: str) -> list[dict[str, Any]]:
    return [s.detail for s in result.steps if s.kind == kind]


def test_tiny_model_makes_well_formed_calls_within_budget(
    client: FhirClient, vlms: list[LoadedVlm], images: list[ModelImage]
) -> None:
    all_calls: list[dict[str, Any]] = []
    for vlm in vlms:
        context = context_of(client)
        registry = registry_for(client)
        result = run_agent(vlm, images, context, registry, max_steps=4, max_tool_calls=3)
        steps = details(result, "agent_step")
        calls = details(result, "tool_call")
        all_calls += calls
        assert 1 <= len(steps) <= 4 and len(calls) <= 3
        assert details(result, "action_error") == []
        for step in steps:
            assert step["constrained"] is True and step["stopped"] is True
            action = parse_action(step["text"])  # every answer is an action
            assert action.writes_report or action.arguments["patient_id"] == PATIENT
        for call in calls:
            assert call["error_kind"] not in MODEL_MISTAKES, call
        assert details(result, "agent_stop")[0]["reason"] in ("model", "max_tool_calls", "max_steps")
        # the report cites only what this trace showed the model
        allowed = {e.id for e in [*context.evidence, *result.tool_evidence]} | {
            im.ref.citation_id for im in images
        }
        cited = {c for s in [*result.report.findings, *result.report.impression] for c in s.citations}
        assert cited <= allowed and result.report.untrained_model is True
        for item in result.tool_evidence:  # evidence the tools read is this patient's
            assert item.resource_type != "Patient" or item.resource_id == PATIENT
    assert all_calls, "none of the random models called a tool"
    assert any(c["ok"] for c in all_calls)


def test_tiny_model_respects_a_budget_of_one_call(
    client: FhirClient, vlms: list[LoadedVlm], images: list[ModelImage]
) -> None:
    for vlm in vlms:
        result = run_agent(vlm, images, context_of(client), registry_for(client), max_tool_calls=1)
        assert len(details(result, "tool_call")) <= 1
        assert len(details(result, "agent_step")) <= 2


def test_another_patient_is_refused_and_nothing_of_theirs_is_read(
    client: FhirClient, images: list[ModelImage]
) -> None:
    asks_other = json.dumps(
        {"tool": "lab_results", "arguments": {"patient_id": "vt-demo-2", "loinc": CREATININE}}
    )
    model = ScriptedModel(
        [asks_other, json.dumps({"tool": WRITE_REPORT}), '{"findings": [], "impression": []}']
    )
    registry = registry_for(client)
    result = run_agent(model, images, context_of(client), registry)
    (call,) = details(result, "tool_call")
    assert call["error_kind"] == "patient_scope" and call["evidence"] == []
    assert registry.evidence() == [] and result.tool_evidence == []
    assert "vt-demo-2" not in model.seen[1]["prompt"].split("Your steps so far:")[0]


def test_lab_read_by_the_agent_is_cited_and_verified(client: FhirClient, images: list[ModelImage]) -> None:
    context = PatientContext(patient_id=PATIENT)  # nothing up front: the lab comes only from the tool
    registry = registry_for(client)
    first = registry_for(client).call("lab_results", {"patient_id": PATIENT, "loinc": CREATININE, "limit": 1})
    assert first.result is not None
    (lab,) = first.result.evidence
    value = first.result.facts[lab.id].quantities[0]
    statement = {
        "text": f"Creatinine {value.value} {value.unit}",
        "severity": "minor",
        "laterality": "none",
        "codes": [],
        "citations": [lab.id],
    }
    wrong = {**statement, "text": f"Creatinine {value.value + 3} {value.unit}"}
    call = {"tool": "lab_results", "arguments": {"patient_id": PATIENT, "loinc": CREATININE, "limit": 1}}
    model = ScriptedModel(
        [
            json.dumps(call),
            json.dumps({"tool": WRITE_REPORT}),
            json.dumps({"findings": [statement, wrong], "impression": []}),
        ]
    )
    result = run_agent(model, images, context, registry)
    assert [e.id for e in result.tool_evidence] == [lab.id]
    verified = verify_report(
        result.report,
        [*context.evidence, *result.tool_evidence],
        [im.ref for im in images] + result.tool_image_refs,
        result.tool_facts,
    )
    assert [v.supported for v in verified.verdicts] == [True, False]


def test_ranker_maps_the_patients_active_conditions(
    client: FhirClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from integrations.tools.rare_disease import fhir_active_conditions, rare_disease_tools
    from tests.unit.test_tools_hpo import build_extract

    extract = build_extract(tmp_path_factory.mktemp("hpo") / "data")
    registry = ToolRegistry(PATIENT, rare_disease_tools(fhir_active_conditions(client), extract))
    outcome = registry.call("rare_disease_ranking", {"patient_id": PATIENT, "limit": 3})
    assert outcome.ok, outcome.error
    content = outcome.result.content  # type: ignore[union-attr]
    mapped = {p["hpo_id"]: p["from"] for p in content["phenotypes"]}
    # vt-demo-1's active hypertension and chronic kidney disease map; the resolved pneumonia is not read
    assert {"HP:0000822", "HP:0012622"} <= set(mapped)
    conditions = {e.id for e in registry.evidence() if e.resource_type == "Condition"}
    assert all(origin in conditions for origins in mapped.values() for origin in origins)
    assert len(conditions) == 3 and len(content["ranking"]) == 3

"""run_agent's control flow: errors back to the model, patient scope, budgets, citations, crops.

The model here is ``ScriptedModel``, a stand-in for a trained model: no trained VLM can run on this
machine, and an untrained one cannot be made to choose a particular call, refuse a patient or cite a given
id. It answers each step with the next scripted text and records what it was shown. Everything else is
real: the registry, its validation and patient scope, the tools, the verifier. The tiny random model is
run through the same loop in ``test_agent_tiny_model.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import Field
from pydicom.data import get_testdata_file

from model.agent import WRITE_REPORT, run_agent
from model.context import PatientContext
from model.imaging import ModelImage, load_model_image
from model.report import EvidenceItem, ImageRef
from model.runtime import Generation, GenerationTimings, ModelIdentity
from model.tools import (
    PatientScope,
    PatientScopedArguments,
    Tool,
    ToolFailure,
    ToolImage,
    ToolRegistry,
    ToolResult,
)
from model.trace import TraceStep
from model.verification import EvidenceFacts, FactQuantity, verify_report

PATIENT = "p-under-review"
IDENTITY = ModelIdentity(
    family="scripted",
    architecture="ScriptedModel",
    model_type="scripted",
    weights_sha256="0" * 64,
    dtype="none",
    attention="none",
    device="cpu",
    parameter_count=0,
    untrained=True,
)
LAB_ID = "Observation/creat-1/_history/2"
CROP_REF = ImageRef(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5", frame=0)


class ScriptedModel:
    """Answers step i with ``answers[i]``; one token per character, cut at ``max_new_tokens`` like a model."""

    def __init__(self, answers: Sequence[str], *, max_images: int = 3) -> None:
        self.answers = list(answers)
        self.seen: list[dict[str, Any]] = []
        self._max_images = max_images

    @property
    def identity(self) -> ModelIdentity:
        return IDENTITY

    @property
    def max_new_tokens(self) -> int:
        return 4000

    @property
    def max_images(self) -> int:
        return self._max_images

    def generate(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        max_new_tokens: int,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        self.seen.append(
            {
                "images": list(images),
                "prompt": prompt,
                "max_new_tokens": max_new_tokens,
                "schema": json_schema,
            }
        )
        full = self.answers.pop(0) if self.answers else DONE
        text = full[:max_new_tokens]
        return Generation(
            text=text,
            token_ids=list(range(len(text))),
            token_count=len(text),
            prompt_token_count=len(prompt),
            stopped=len(text) == len(full),
            constrained=json_schema is not None,
            timings=GenerationTimings(
                preprocess_s=0.0, time_to_first_token_s=0.0, total_s=0.0, decode_tokens_per_s=0.0
            ),
        )


class LabArgs(PatientScopedArguments):
    loinc: str = Field(pattern=r"^[0-9]{1,7}-[0-9]$")


class SeriesArgs(PatientScopedArguments):
    series: str = Field(max_length=64)


def _lab(scope: PatientScope, args: LabArgs) -> ToolResult:
    item = EvidenceItem(
        id=LAB_ID,
        resource_type="Observation",
        resource_id="creat-1",
        version_id="2",
        sha256="a" * 64,
        display="Creatinine 1.4 mg/dL (2024-05-01)",
    )
    facts = EvidenceFacts(
        resource_type="Observation",
        quantities=[FactQuantity(value=1.4, unit="mg/dL")],  # type: ignore[arg-type]
        names=["Creatinine"],
    )
    return ToolResult(
        content={"items": [{"id": LAB_ID, "text": item.display}]}, evidence=[item], facts={LAB_ID: facts}
    )


def _failing(scope: PatientScope, args: SeriesArgs) -> ToolResult:
    raise ToolFailure(f"no series {args.series!r} in this study")


def _crop(scope: PatientScope, args: SeriesArgs) -> ToolResult:
    crop = Image.new("L", (32, 32), color=200)
    return ToolResult(
        content={"image": CROP_REF.citation_id},
        images=[ToolImage(image=crop, ref=CROP_REF, description="crop, lung window")],
    )


def registry() -> ToolRegistry:
    return ToolRegistry(
        PATIENT,
        [
            Tool("lab_results", "A lab by LOINC code.", LabArgs, _lab),
            Tool("header_facts", "Header facts of a series.", SeriesArgs, _failing),
            Tool("windowed_crop", "A windowed crop.", SeriesArgs, _crop),
        ],
    )


DONE = json.dumps({"tool": WRITE_REPORT})


def call(tool: str, **arguments: Any) -> str:
    return json.dumps({"tool": tool, "arguments": {"patient_id": PATIENT, **arguments}})


def report(*statements: dict[str, Any]) -> str:
    return json.dumps({"findings": list(statements), "impression": []})


def statement(text: str, *citations: str) -> dict[str, Any]:
    return {
        "text": text,
        "severity": "minor",
        "laterality": "none",
        "codes": [],
        "citations": list(citations),
    }


@pytest.fixture(scope="module")
def study_image() -> ModelImage:
    return load_model_image(Path(str(get_testdata_file("CT_small.dcm"))), preset="lung")


CONTEXT = PatientContext(patient_id=PATIENT)


def tool_calls(steps: Sequence[TraceStep]) -> list[dict[str, Any]]:
    return [s.detail for s in steps if s.kind == "tool_call"]


def stop_reason(steps: Sequence[TraceStep]) -> str:
    return str(next(s.detail["reason"] for s in steps if s.kind == "agent_stop"))


def test_a_tool_error_goes_back_to_the_model_as_the_result(study_image: ModelImage) -> None:
    model = ScriptedModel([call("header_facts", series="9.9.9"), DONE, report()])
    result = run_agent(model, [study_image], CONTEXT, registry())
    (traced,) = tool_calls(result.steps)
    assert traced["ok"] is False and traced["error_kind"] == "tool_failed"
    answer = json.loads(traced["result"])
    assert answer == {"error": "tool_failed", "message": "no series '9.9.9' in this study"}
    # the next step's prompt shows the model its call and the error as the answer
    assert '"series": "9.9.9"' in model.seen[1]["prompt"]
    assert traced["result"] in model.seen[1]["prompt"]
    assert stop_reason(result.steps) == "model"


def test_invalid_arguments_and_unknown_tools_are_answers_too(study_image: ModelImage) -> None:
    model = ScriptedModel(
        [call("lab_results", loinc="not-a-code"), call("no_such_tool"), '{"tool": ', report()]
    )
    result = run_agent(model, [study_image], CONTEXT, registry(), max_steps=3)
    kinds = [c["error_kind"] for c in tool_calls(result.steps)]
    assert kinds == ["invalid_arguments", "unknown_tool"]
    assert "loinc" in model.seen[1]["prompt"] and "invalid_arguments" in model.seen[1]["prompt"]
    (bad,) = [s for s in result.steps if s.kind == "action_error"]
    assert "not JSON" in bad.detail["error"]
    assert stop_reason(result.steps) == "max_steps"
    assert len(model.seen) == 4  # three steps, then the report anyway


def test_another_patient_is_refused_through_the_agent(study_image: ModelImage) -> None:
    """The grammar pins the patient, so only a model decoded without it can ask; the registry refuses."""
    other = json.dumps(
        {"tool": "lab_results", "arguments": {"patient_id": "someone-else", "loinc": "2160-0"}}
    )
    model = ScriptedModel([other, DONE, report(statement("Creatinine", LAB_ID))])
    result = run_agent(model, [study_image], CONTEXT, registry())
    (traced,) = tool_calls(result.steps)
    assert traced["error_kind"] == "patient_scope" and traced["evidence"] == []
    assert "patient_scope" in model.seen[1]["prompt"]
    assert result.tool_evidence == []
    # nothing of that call is citable: the statement loses its citation
    assert result.report.findings[0].citations == []
    dropped = next(s for s in result.steps if s.kind == "citations").detail["dropped"]
    assert dropped == [LAB_ID]


def test_the_step_grammar_pins_the_patient(study_image: ModelImage) -> None:
    model = ScriptedModel([DONE, report()])
    run_agent(model, [study_image], CONTEXT, registry())
    schema = model.seen[0]["schema"]
    lab = next(o for o in schema["anyOf"] if o["properties"]["tool"].get("const") == "lab_results")
    assert lab["properties"]["arguments"]["properties"]["patient_id"] == {"type": "string", "const": PATIENT}
    assert "findings" in model.seen[1]["schema"]["properties"]  # the report step uses the report schema


def test_tool_call_budget_ends_the_calls_then_the_report_is_written(study_image: ModelImage) -> None:
    model = ScriptedModel([call("lab_results", loinc="2160-0")] * 10 + [report()])
    model.answers[3] = report()  # what the model writes after the budget stopped it
    result = run_agent(model, [study_image], CONTEXT, registry(), max_tool_calls=3)
    assert len(tool_calls(result.steps)) == 3
    assert stop_reason(result.steps) == "max_tool_calls"
    assert len(model.seen) == 4 and "findings" in model.seen[3]["schema"]["properties"]


def test_step_budget(study_image: ModelImage) -> None:
    model = ScriptedModel(["[]"] * 5 + [report()])
    model.answers[2] = report()
    result = run_agent(model, [study_image], CONTEXT, registry(), max_steps=2)
    assert [s.kind for s in result.steps].count("agent_step") == 2
    assert stop_reason(result.steps) == "max_steps"


def test_token_budget_cuts_the_last_step_and_stops(study_image: ModelImage) -> None:
    answer = call("lab_results", loinc="2160-0")  # one token per character
    model = ScriptedModel([answer, answer, answer, report()])
    result = run_agent(model, [study_image], CONTEXT, registry(), token_budget=len(answer) + 10)
    # the first step may use the whole budget; the second gets what the first left, and is cut off
    assert [seen["max_new_tokens"] for seen in model.seen[:2]] == [len(answer) + 10, 10]
    assert len(model.seen) == 3
    cut = [s for s in result.steps if s.kind == "action_error"]
    assert len(cut) == 1 and cut[0].detail["stopped"] is False
    stop = next(s for s in result.steps if s.kind == "agent_stop").detail
    assert stop["reason"] == "token_budget" and stop["tokens"] == len(answer) + 10


def test_per_step_token_limit(study_image: ModelImage) -> None:
    model = ScriptedModel([DONE, report()])
    run_agent(model, [study_image], CONTEXT, registry(), max_new_tokens_per_step=40)
    assert model.seen[0]["max_new_tokens"] == 40


def test_tool_evidence_becomes_citable_and_verifiable(study_image: ModelImage) -> None:
    good = statement("Creatinine 1.4 mg/dL", LAB_ID, study_image.ref.citation_id)
    unknown = statement("Creatinine 1.4 mg/dL", "Observation/never-read/_history/1")
    model = ScriptedModel([call("lab_results", loinc="2160-0"), DONE, report(good, unknown)])
    result = run_agent(model, [study_image], CONTEXT, registry())
    assert [e.id for e in result.tool_evidence] == [LAB_ID]
    assert LAB_ID in model.seen[1]["prompt"] and LAB_ID in model.seen[2]["prompt"]
    enum = model.seen[2]["schema"]["properties"]["findings"]["items"]["properties"]["citations"]["items"]
    assert enum["enum"] == [LAB_ID, study_image.ref.citation_id]
    first, second = result.report.findings
    assert first.citations == [LAB_ID, study_image.ref.citation_id] and second.citations == []
    verified = verify_report(
        result.report,
        [*CONTEXT.evidence, *result.tool_evidence],
        [study_image.ref, *result.tool_image_refs],
        result.tool_facts,
    )
    assert [v.supported for v in verified.verdicts] == [True, False]


def test_a_crop_is_shown_in_the_next_step_and_citable(study_image: ModelImage) -> None:
    cite_crop = statement("Opacity in the crop", CROP_REF.citation_id)
    model = ScriptedModel(
        [call("windowed_crop", series="1.2.3.4"), DONE, report(cite_crop)],
        max_images=2,
    )
    result = run_agent(model, [study_image], CONTEXT, registry())
    assert len(model.seen[0]["images"]) == 1
    shown = model.seen[1]["images"]
    assert len(shown) == 2 and shown[1].size == (32, 32)
    assert f"[{CROP_REF.citation_id}] crop, lung window" in model.seen[1]["prompt"]
    assert result.tool_image_refs == [CROP_REF]
    assert result.report.findings[0].citations == [CROP_REF.citation_id]
    traced = tool_calls(result.steps)[0]
    assert traced["images"] == [CROP_REF.citation_id]
    assert "pixel" not in json.dumps([s.model_dump(mode="json") for s in result.steps]).lower()


def test_steps_reach_the_sink_and_the_prompt_digest_covers_every_step(study_image: ModelImage) -> None:
    seen: list[TraceStep] = []
    model = ScriptedModel([call("lab_results", loinc="2160-0"), DONE, report(statement("No acute finding"))])
    result = run_agent(model, [study_image], CONTEXT, registry(), step_sink=seen.append)
    assert seen == result.steps
    kinds = [s.kind for s in seen]
    assert kinds[:2] == ["model", "prompt"] and kinds[-3:] == ["generation", "citations", "report"]
    digests = [s.detail["prompt_sha256"] for s in seen if s.kind in ("agent_step", "report_prompt")]
    assert len(digests) == 3
    assert result.prompt_sha256 == hashlib.sha256(json.dumps(digests).encode()).hexdigest()


def test_registry_for_another_patient_is_refused(study_image: ModelImage) -> None:
    with pytest.raises(ValueError, match="registry is scoped to patient"):
        run_agent(ScriptedModel([]), [study_image], PatientContext(patient_id="x"), registry())


def test_negative_budgets_are_refused(study_image: ModelImage) -> None:
    with pytest.raises(ValueError, match="max_new_tokens_per_step must be at least 1"):
        run_agent(ScriptedModel([]), [study_image], CONTEXT, registry(), max_new_tokens_per_step=0)


def test_zero_steps_goes_straight_to_the_report(study_image: ModelImage) -> None:
    model = ScriptedModel([report()])
    result = run_agent(model, [study_image], CONTEXT, registry(), max_steps=0)
    assert len(model.seen) == 1 and stop_reason(result.steps) == "max_steps"

"""render_trace_markdown on a trace made the way the worker makes it: run_agent's steps, then verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from model.agent import WRITE_REPORT, run_agent
from model.context import PatientContext
from model.imaging import load_model_image
from model.trace_markdown import render_trace_markdown
from model.verification import verify_report
from tests.unit.test_agent_loop import (
    LAB_ID,
    PATIENT,
    ScriptedModel,
    call,
    registry,
    report,
    statement,
)


@pytest.fixture(scope="module")
def trace() -> dict[str, Any]:
    image = load_model_image(Path(str(get_testdata_file("CT_small.dcm"))), preset="lung")
    good = statement("Creatinine 1.4 mg/dL", LAB_ID)
    wrong = statement("Creatinine 9.9 mg/dL | with a pipe", LAB_ID)
    model = ScriptedModel(
        [
            call("header_facts", series="9.9.9"),
            call("lab_results", loinc="2160-0"),
            "``` not json",
            json.dumps({"tool": WRITE_REPORT}),
            report(good, wrong),
        ]
    )
    context = PatientContext(patient_id=PATIENT)
    result = run_agent(model, [image], context, registry())
    verified = verify_report(result.report, result.tool_evidence, [image.ref], result.tool_facts)
    steps = [s.model_dump(mode="json") for s in result.steps]
    steps.append(
        {
            "kind": "verification",
            "at": steps[-1]["at"],
            "detail": {"verdicts": [v.model_dump(mode="json") for v in verified.verdicts]},
        }
    )
    return {
        "version": 1,
        "analysis_id": "an-123",
        "model": result.identity.model_dump(mode="json"),
        "prompt_sha256": result.prompt_sha256,
        "evidence": [],
        "images": [image.ref.model_dump(mode="json")],
        "steps": steps,
        "elapsed_s": 1.25,
    }


def test_header_model_identity_and_digests(trace: dict[str, Any]) -> None:
    text = render_trace_markdown(trace)
    assert text.startswith("# Decision trace an-123\n")
    assert "Untrained test model" in text
    assert f"| weights sha256 | {'0' * 64} |" in text
    assert f"| prompt sha256 | {trace['prompt_sha256']} |" in text
    assert "Analysis took 1.25 s." in text


def test_every_step_in_order_with_inputs_outputs_and_evidence(trace: dict[str, Any]) -> None:
    text = render_trace_markdown(trace)
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    kinds = [t.split(". ", 1)[1].split(" (+")[0] for t in titles]
    assert kinds == [
        "Context assembled",
        "Model step 1",
        "Tool call 1",
        "Model step 2",
        "Tool call 2",
        "Model step 3",
        "Unusable answer",
        "Model step 4",
        "Tool phase ended",
        "Report prompt",
        "Report generated",
        "Citations checked",
        "Draft",
        "Verification",
    ]
    assert "`header_facts` — refused: **tool_failed** — no series '9.9.9' in this study" in text
    assert f"Evidence read: `{LAB_ID}`" in text
    assert "Reason: **model**; 4 steps, 2 calls" in text
    # a model answer containing a fence cannot break out of its block
    assert "````json\n``` not json\n````" in text


def test_verdicts_table(trace: dict[str, Any]) -> None:
    text = render_trace_markdown(trace)
    assert "1 of 2 statements verified." in text
    assert f"| findings 1 | verified |  | Creatinine 1.4 mg/dL | {LAB_ID} |" in text
    assert "| findings 2 | rejected | number_mismatch | Creatinine 9.9 mg/dL \\| with a pipe |" in text


def test_minimal_trace_renders() -> None:
    text = render_trace_markdown({"version": 1, "steps": [{"kind": "memory_retry", "detail": {"images": 2}}]})
    assert (
        "### 1. memory_retry" in text and '"images": 2' in text and "## Evidence in the context (0)" in text
    )

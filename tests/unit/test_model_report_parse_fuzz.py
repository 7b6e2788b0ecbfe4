"""Fuzzing the report parser (hypothesis): whatever the model writes, a report or a traced parse error.

`parse_report` reads the model's answer into the report types, for the single-shot draft and the agent
alike. Without constrained decoding (no xgrammar, or a generation cut off) the answer is arbitrary text,
so: it never raises, a report it returns satisfies the JSON schema the model was asked for (findings at
least one, bounded text, codes and citations, citations only of ids the model was shown), and an empty
report always comes with the reason that goes into the `parse_error` step. `draft_report` is run on the
same inputs through a stand-in model, so the wiring into the trace is checked too.

Inputs: arbitrary text, arbitrary JSON values, schema-shaped objects with fields of the wrong type or
out of bounds, and the inputs Python's json module refuses with something other than JSONDecodeError
(nesting past the recursion limit, integers past the digit limit). Derandomized, modest example counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import jsonschema_rs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.context import PatientContext
from model.draft import MAX_STATEMENT_CHARS, draft_report, parse_report, report_schema
from model.imaging import ModelImage
from model.report import EvidenceItem, ImageRef, Laterality, Severity
from model.runtime import Generation, GenerationTimings, LoadedVlm, ModelIdentity

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED = ["obs-creat", "cond-copd", "img:1.2.3.4:0"]
SCHEMA = jsonschema_rs.validator_for(report_schema(ALLOWED))
DEEP = "[" * 5000 + "]" * 5000
HUGE_INTEGER = '{"findings": ' + "9" * 5000 + "}"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
wrong = json_values | st.text(min_size=MAX_STATEMENT_CHARS - 2, max_size=MAX_STATEMENT_CHARS + 40)
statements = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=MAX_STATEMENT_CHARS) | wrong,
        "severity": st.sampled_from([s.value for s in Severity]) | wrong,
        "laterality": st.sampled_from([lat.value for lat in Laterality]) | wrong,
        "codes": st.lists(st.text(max_size=40), max_size=5) | wrong,
        "citations": st.lists(st.sampled_from([*ALLOWED, "made-up", ""]), max_size=6) | wrong,
        "extra": json_values,
    },
)
reports = st.fixed_dictionaries(
    {},
    optional={
        "findings": st.lists(statements | json_values, max_size=6) | json_values,
        "impression": st.lists(statements | json_values, max_size=6) | json_values,
        "untrained_model": json_values,
    },
)
answers = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | reports.map(json.dumps)
    # A generation cut off by max_new_tokens: a prefix of a report.
    | st.tuples(reports.map(json.dumps), st.integers(0, 400)).map(lambda cut: cut[0][: cut[1]])
)


def check(answer: str) -> None:
    report, dropped, error = parse_report(answer, set(ALLOWED), untrained=True)
    empty = not report.findings and not report.impression
    assert empty == (error is not None), (error, report)
    if error is None:
        dumped = report.model_dump(mode="json")
        errors = [
            str(e).splitlines()[0]
            for e in SCHEMA.iter_errors({k: dumped[k] for k in ("findings", "impression")})
        ]
        assert not errors, errors
    assert not set(dropped) & set(ALLOWED)


@FUZZ
@example(DEEP)  # json raises RecursionError, not JSONDecodeError
@example(HUGE_INTEGER)  # json raises ValueError (int digit limit)
@example('{"findings": [], "impression": [{"text": "an impression without findings"}]}')
@example(json.dumps({"findings": [{"text": "x" * (MAX_STATEMENT_CHARS + 1)}]}))
@example(json.dumps({"findings": [{"text": "nodule", "codes": ["a", "b", "c", "d"]}]}))
@example(json.dumps({"findings": [{"text": "n", "citations": ["obs-creat", "a", "b", "c", "d"]}]}))
@example(json.dumps({"findings": [{"text": f"finding {n}"} for n in range(9)]}))
@given(answers)
def test_any_answer_parses_to_a_schema_report_or_a_parse_error(answer: str) -> None:
    check(answer)


def test_a_well_formed_answer_is_kept_whole() -> None:
    answer = {
        "findings": [
            {
                "text": "Nodule",
                "severity": "moderate",
                "laterality": "left",
                "codes": ["R91.1"],
                "citations": ["obs-creat", "made-up", "img:1.2.3.4:0"],
            },
        ],
        "impression": [
            {"text": "COPD", "severity": "minor", "laterality": "none", "codes": [], "citations": []}
        ],
    }
    report, dropped, error = parse_report(json.dumps(answer), set(ALLOWED), untrained=False)
    assert error is None and dropped == ["made-up"]
    assert [s.citations for s in report.findings] == [["obs-creat", "img:1.2.3.4:0"]]
    assert report.impression[0].text == "COPD" and report.untrained_model is False


# ------------------------------------------------------------------- the same through draft_report


class AnsweringModel:
    """Stands in for the VLM: `generate` answers with the text under test (parsing is what is tested)."""

    identity = ModelIdentity(
        family="fuzz",
        architecture="AnsweringModel",
        model_type="fuzz",
        weights_sha256="0" * 64,
        dtype="none",
        attention="none",
        device="cpu",
        parameter_count=0,
        untrained=True,
    )
    max_images = 2
    max_new_tokens = 64

    def __init__(self) -> None:
        self.answer = ""

    def generate(self, images: Sequence[Image.Image], prompt: str, **_options: Any) -> Generation:
        timings = GenerationTimings(preprocess_s=0, time_to_first_token_s=0, total_s=0, decode_tokens_per_s=0)
        return Generation(
            text=self.answer,
            token_ids=[],
            token_count=0,
            prompt_token_count=0,
            stopped=False,
            constrained=False,
            timings=timings,
        )


MODEL = AnsweringModel()
IMAGE = ModelImage(
    image=Image.new("RGB", (8, 8)),
    ref=ImageRef(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4", frame=0),
    description="axial CT, lung window",
)
CONTEXT = PatientContext(
    patient_id="p1",
    evidence=[
        EvidenceItem(id=ident, resource_type="Observation", resource_id=ident, sha256="b" * 64, display="x")
        for ident in ALLOWED[:2]
    ],
)


@settings(FUZZ, max_examples=60)
@example(DEEP)
@example(HUGE_INTEGER)
@given(answers)
def test_draft_report_traces_every_answer(answer: str) -> None:
    MODEL.answer = answer
    result = draft_report(cast(LoadedVlm, MODEL), [IMAGE], CONTEXT)
    kinds = [s.kind for s in result.steps]
    empty = not result.report.findings and not result.report.impression
    assert ("parse_error" in kinds) == empty
    assert kinds[-2:] == ["citations", "report"]

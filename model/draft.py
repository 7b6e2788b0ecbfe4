"""Draft a structured report for one study from its images and the patient's evidence.

The model sees the evidence's short displays and the image references, and must answer with JSON whose
citations are restricted (by the schema's enum, under constrained decoding) to ids it was shown. Whatever
still cites an unknown id is dropped and the drop is traced, so a report never points at evidence that
was not in front of the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from model.constrained import grammar_available
from model.context import PatientContext
from model.imaging import ModelImage
from model.report import DraftReport, EvidenceItem, ImageRef, Laterality, Severity, Statement
from model.runtime import LoadedVlm, ModelIdentity
from model.trace import TraceStep
from model.verification import EvidenceFacts

if TYPE_CHECKING:
    from model.batching import BatchScheduler

MAX_STATEMENTS = 4
MAX_STATEMENT_CHARS = 160
MAX_CODES = 3
MAX_CODE_CHARS = 32
MAX_CITATIONS = 4
INSTRUCTIONS = (
    "You are drafting a preliminary radiology report for a clinician to review. "
    "Answer with JSON: findings and impression, each a list of statements with text, severity, "
    "laterality, codes and citations. Cite only the ids listed below."
)


class DraftResult(BaseModel):
    """The report, the trace steps that produced it, the model identity and the prompt digest.

    ``tool_evidence``, ``tool_facts`` and ``tool_image_refs`` are what the agent's tools read beyond the
    patient context (empty for a single-shot draft): the report may cite them, so the verifier must be
    given them together with the context's evidence and the study images.
    """

    report: DraftReport
    steps: list[TraceStep]
    identity: ModelIdentity
    prompt_sha256: str
    tool_evidence: list[EvidenceItem] = Field(default_factory=list)
    tool_facts: dict[str, EvidenceFacts] = Field(default_factory=dict)
    tool_image_refs: list[ImageRef] = Field(default_factory=list)


def citable_ids(images: Sequence[ModelImage], context: PatientContext) -> list[str]:
    """Ids a statement may cite: evidence ids then image ids, in prompt order."""
    return [e.id for e in context.evidence] + [im.ref.citation_id for im in images]


def build_prompt(images: Sequence[ModelImage], context: PatientContext) -> str:
    """The text prompt: instructions, one line per evidence item and per image, each with its id."""
    lines = [INSTRUCTIONS, "Evidence:"]
    lines += [f"[{e.id}] {e.resource_type}: {e.display}" for e in context.evidence] or ["(none)"]
    lines.append("Images (in order):")
    lines += [f"[{im.ref.citation_id}] {im.description}" for im in images] or ["(none)"]
    return "\n".join(lines)


def report_schema(ids: Sequence[str]) -> dict[str, Any]:
    """JSON schema for the model's answer; citations are an enum of `ids` (empty enum: none allowed)."""
    citations: dict[str, Any] = (
        {"type": "array", "items": {"type": "string", "enum": list(ids)}, "maxItems": MAX_CITATIONS}
        if ids
        else {"type": "array", "maxItems": 0}
    )
    statement = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": MAX_STATEMENT_CHARS},
            "severity": {"type": "string", "enum": [s.value for s in Severity]},
            "laterality": {"type": "string", "enum": [lat.value for lat in Laterality]},
            "codes": {
                "type": "array",
                "items": {"type": "string", "maxLength": MAX_CODE_CHARS},
                "maxItems": MAX_CODES,
            },
            "citations": citations,
        },
        "required": ["text", "severity", "laterality", "codes", "citations"],
        "additionalProperties": False,
    }
    statements = {"type": "array", "items": statement, "maxItems": MAX_STATEMENTS}
    # A report always states its findings, if only "no acute abnormality"; the impression may be empty.
    findings = {**statements, "minItems": 1}
    return {
        "type": "object",
        "properties": {"findings": findings, "impression": statements},
        "required": ["findings", "impression"],
        "additionalProperties": False,
    }


def parse_statements(raw: Any) -> list[Statement]:
    """The well-formed statements of a JSON list, at most MAX_STATEMENTS; anything else in it is skipped.

    Well-formed means what `report_schema` allows (text, codes and citations within its bounds): without
    constrained decoding nothing else enforces them, and a statement beyond them is not one we asked for.
    """
    if not isinstance(raw, list):
        return []
    statements = []
    for item in raw:
        try:
            statement = Statement.model_validate(item)
        except ValidationError:
            continue
        if _within_schema(statement):
            statements.append(statement)
    return statements[:MAX_STATEMENTS]


def _within_schema(statement: Statement) -> bool:
    return (
        len(statement.text) <= MAX_STATEMENT_CHARS
        and len(statement.codes) <= MAX_CODES
        and all(len(code) <= MAX_CODE_CHARS for code in statement.codes)
        and len(statement.citations) <= MAX_CITATIONS
    )


def parse_report(
    text: str, allowed: set[str], *, untrained: bool
) -> tuple[DraftReport, list[str], str | None]:
    """The report in the model's answer, the citations dropped as unknown, and why the report is empty.

    Never raises: output that is not JSON (cut off, or nested past the parser's depth), not an object, or
    without one well-formed finding gives an empty report and a reason for the `parse_error` step. A
    report that is not empty satisfies `report_schema` for `allowed`.
    """
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        return _empty(untrained), [], f"{exc.msg} at char {exc.pos}"
    except (ValueError, RecursionError) as exc:  # e.g. an integer past the digit limit, deep nesting
        return _empty(untrained), [], f"answer is not JSON that can be read ({type(exc).__name__})"
    if not isinstance(parsed, dict):
        return _empty(untrained), [], "answer is not a JSON object"
    findings, dropped_f = keep_known_citations(parse_statements(parsed.get("findings")), allowed)
    if not findings:
        return _empty(untrained), [], "answer has no well-formed finding"
    impression, dropped_i = keep_known_citations(parse_statements(parsed.get("impression")), allowed)
    return (
        DraftReport(findings=findings, impression=impression, untrained_model=untrained),
        dropped_f + dropped_i,
        None,
    )


def _empty(untrained: bool) -> DraftReport:
    return DraftReport(findings=[], impression=[], untrained_model=untrained)


def keep_known_citations(statements: list[Statement], allowed: set[str]) -> tuple[list[Statement], list[str]]:
    """Statements with only citations in ``allowed`` (first occurrence kept), and the citations dropped."""
    kept, dropped = [], []
    for st in statements:
        good = list(dict.fromkeys(c for c in st.citations if c in allowed))
        dropped += [c for c in st.citations if c not in allowed]
        kept.append(st.model_copy(update={"citations": good}))
    return kept, dropped


def draft_report(
    vlm: LoadedVlm | BatchScheduler,
    images: Sequence[ModelImage],
    context: PatientContext,
    step_sink: Callable[[TraceStep], None] | None = None,
) -> DraftResult:
    """Generate, parse and citation-check one draft report; every step goes to `step_sink` as it happens.

    `vlm` may be the `BatchScheduler` serving the model, so that concurrent studies (worker threads)
    share batches. Uses constrained decoding when xgrammar is installed. Output that is not a report (an
    untrained model, or a generation cut off by max_new_tokens) yields an empty report plus a
    `parse_error` step rather than an exception (`parse_report`): the study is still traced and the
    clinician sees no fabricated statements.
    """
    steps: list[TraceStep] = []

    def emit(kind: str, **detail: Any) -> None:
        step = TraceStep(kind=kind, detail=detail)
        steps.append(step)
        if step_sink is not None:
            step_sink(step)

    identity = vlm.identity
    images = list(images)[: vlm.max_images]
    ids = citable_ids(images, context)
    prompt = build_prompt(images, context)
    prompt_sha256 = hashlib.sha256(prompt.encode()).hexdigest()
    emit("model", **identity.model_dump())
    emit(
        "prompt",
        prompt_sha256=prompt_sha256,
        evidence_ids=[e.id for e in context.evidence],
        evidence_sha256=[e.sha256 for e in context.evidence],
        images=[im.ref.model_dump() for im in images],
    )
    schema = report_schema(ids) if grammar_available() else None
    generation = vlm.generate(
        [im.image for im in images], prompt, max_new_tokens=vlm.max_new_tokens, json_schema=schema
    )
    emit(
        "generation",
        text=generation.text,
        token_count=generation.token_count,
        prompt_token_count=generation.prompt_token_count,
        stopped=generation.stopped,
        constrained=generation.constrained,
        timings=generation.timings.model_dump(),
    )
    report, dropped, error = parse_report(generation.text, set(ids), untrained=identity.untrained)
    if error is not None:
        emit("parse_error", error=error, stopped=generation.stopped)
    emit("citations", allowed=ids, dropped=dropped)
    emit("report", report=report.model_dump(mode="json"))
    return DraftResult(report=report, steps=steps, identity=identity, prompt_sha256=prompt_sha256)

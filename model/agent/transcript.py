"""The text the model reads at each step: its instructions, the patient context, the tools, what it did.

The runtime takes one prompt (plus images) per generation, so the conversation so far is rendered into
that prompt: every earlier action as the model wrote it and the tool's answer (cut to a bounded length, so
a long result cannot crowd out the rest). Evidence and images are listed with the ids a statement cites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from model.agent.action_schema import WRITE_REPORT
from model.report import EvidenceItem, ImageRef

MAX_RESULT_CHARS = 1200

STEP_INSTRUCTIONS = (
    "You are drafting a preliminary radiology report for a clinician to review. Before writing it you may "
    "call tools to read more of the patient's record or look closer at the images. Answer with one JSON "
    f'object: {{"tool": NAME, "arguments": {{...}}}} to call a tool, or {{"tool": "{WRITE_REPORT}"}} when '
    "you have what you need. Tool answers are shown below your earlier calls."
)
REPORT_INSTRUCTIONS = (
    "Now write the report. Answer with JSON: findings and impression, each a list of statements with "
    "text, severity, laterality, codes and citations. Cite only the ids listed above; every statement "
    "must cite the evidence or image that supports it."
)


class ShownImage(Protocol):
    """An image in front of the model (a study frame or a tool's crop) and how it is cited."""

    @property
    def ref(self) -> ImageRef: ...

    @property
    def description(self) -> str: ...


@dataclass(frozen=True)
class Exchange:
    """One earlier step: the model's answer as written, and what came back (a tool's answer or an error)."""

    answer: str
    reply: str


def tool_line(declaration: Mapping[str, Any]) -> str:
    """``name(arg, optional?): description``; the argument types are enforced by the grammar, not here."""
    parameters = declaration.get("parameters", {})
    required = set(parameters.get("required", []))
    names = [
        name if name in required else f"{name}?"
        for name in parameters.get("properties", {})
        if name != "patient_id"
    ]
    return f"- {declaration['name']}({', '.join(names)}): {declaration.get('description', '')}"


def clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f" ... [cut, {len(text) - limit} more characters]"


def _evidence_lines(evidence: Sequence[EvidenceItem]) -> list[str]:
    return [f"[{e.id}] {e.resource_type}: {e.display}" for e in evidence] or ["(none)"]


def _image_lines(images: Sequence[ShownImage]) -> list[str]:
    return [f"[{im.ref.citation_id}] {im.description}" for im in images] or ["(none)"]


def step_prompt(
    patient_id: str,
    evidence: Sequence[EvidenceItem],
    images: Sequence[ShownImage],
    tools: Sequence[Mapping[str, Any]],
    history: Sequence[Exchange],
    *,
    calls_left: int,
) -> str:
    """The prompt of one decision step (tool call or report)."""
    lines = [STEP_INSTRUCTIONS, f"Patient under review: {patient_id}", "Evidence:"]
    lines += _evidence_lines(evidence)
    lines.append("Images (in order):")
    lines += _image_lines(images)
    lines.append(f"Tools ({calls_left} calls left):")
    lines += [tool_line(t) for t in tools]
    lines.append(f"- {WRITE_REPORT}(): stop calling tools and write the report.")
    lines += _history_lines(history)
    lines.append("Your next action:")
    return "\n".join(lines)


def report_prompt(
    patient_id: str,
    evidence: Sequence[EvidenceItem],
    images: Sequence[ShownImage],
    history: Sequence[Exchange],
) -> str:
    """The prompt of the report step: everything read so far (context and tool evidence), then the task."""
    lines = [f"Patient under review: {patient_id}", "Evidence:"]
    lines += _evidence_lines(evidence)
    lines.append("Images (in order):")
    lines += _image_lines(images)
    lines += _history_lines(history)
    lines.append(REPORT_INSTRUCTIONS)
    return "\n".join(lines)


def _history_lines(history: Sequence[Exchange]) -> list[str]:
    if not history:
        return []
    lines = ["Your steps so far:"]
    for number, exchange in enumerate(history, start=1):
        lines.append(f"{number}. you: {exchange.answer}")
        lines.append(f"   answer: {clip(exchange.reply)}")
    return lines

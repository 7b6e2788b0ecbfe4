"""The tool registry of one analysis: validates calls, enforces patient scope and budget, keeps evidence.

Errors are results, not exceptions: a call with bad arguments, for another patient, to an unknown tool,
over budget, or failing inside the tool comes back as a ``ToolOutcome`` with ``error`` set, which the
agent loop shows the model as the tool's answer. Anything else a tool raises (the FHIR server is down)
propagates: that is the infrastructure failing, and the task should retry, not the model.
The registry accumulates every evidence item and image the tools returned, so the verifier can check
that each citation exists in this trace.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from model.report import EvidenceItem, ImageRef
from model.tools.spec import PatientScope, Tool, ToolFailure, ToolResult
from model.verification import EvidenceFacts

log = logging.getLogger(__name__)

ErrorKind = Literal["unknown_tool", "invalid_arguments", "patient_scope", "budget", "tool_failed"]


class ToolOutcome(BaseModel):
    """One call as traced: what was asked, what came back or why it was refused, how long it took."""

    tool: str
    arguments: dict[str, Any]
    result: ToolResult | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    elapsed_s: float = Field(ge=0)

    @property
    def ok(self) -> bool:
        return self.error is None

    def for_model(self) -> str:
        """The JSON text the model reads as the tool's answer."""
        if self.result is not None:
            return json.dumps(self.result.content, ensure_ascii=False, sort_keys=True, default=str)
        return json.dumps({"error": self.error_kind, "message": self.error}, ensure_ascii=False)


class ToolRegistry:
    """Tools bound to one patient, at most ``max_calls`` calls (refused beyond, still traced)."""

    def __init__(self, patient_id: str, tools: Iterable[Tool[Any]], *, max_calls: int = 16) -> None:
        if not patient_id:
            raise ValueError("patient_id must not be empty")
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {max_calls}")
        self.scope = PatientScope(patient_id)
        self.max_calls = max_calls
        self._tools: dict[str, Tool[Any]] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self._tools[tool.name] = tool
        self._evidence: dict[str, EvidenceItem] = {}
        self._facts: dict[str, EvidenceFacts] = {}
        self._images: dict[str, ImageRef] = {}
        self.outcomes: list[ToolOutcome] = []

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool's declaration, in registration order."""
        return [tool.json_schema() for tool in self._tools.values()]

    def call(self, name: str, arguments: Mapping[str, Any] | str) -> ToolOutcome:
        """Validate and run one call; ``arguments`` is a mapping or the model's JSON text."""
        started = time.perf_counter()
        raw: dict[str, Any] = {}
        try:
            raw = _parse_arguments(arguments)
            result = self._run(name, raw)
            outcome = ToolOutcome(
                tool=name, arguments=raw, result=result, elapsed_s=time.perf_counter() - started
            )
            self._keep(result)
        except _Refused as refused:
            outcome = ToolOutcome(
                tool=name,
                arguments=raw,
                error=str(refused),
                error_kind=refused.kind,
                elapsed_s=time.perf_counter() - started,
            )
            log.info("tool %s refused: %s", name, refused.kind)
        self.outcomes.append(outcome)
        return outcome

    def _run(self, name: str, raw: dict[str, Any]) -> ToolResult:
        if len(self.outcomes) >= self.max_calls:
            raise _Refused("budget", f"tool call budget of {self.max_calls} calls is spent")
        tool = self._tools.get(name)
        if tool is None:
            raise _Refused("unknown_tool", f"no tool named {name!r}; tools: {', '.join(self._tools)}")
        try:
            args = tool.arguments.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(arguments)'}: {e['msg']}" for e in exc.errors()
            )
            raise _Refused("invalid_arguments", problems) from exc
        if args.patient_id != self.scope.patient_id:
            raise _Refused("patient_scope", "this analysis may only read the patient under review")
        try:
            return tool.run(self.scope, args)
        except ToolFailure as exc:
            raise _Refused("tool_failed", str(exc)) from exc

    def _keep(self, result: ToolResult) -> None:
        for item in result.evidence:
            self._evidence[item.id] = item
        self._facts.update(result.facts)
        for ref in [*result.image_refs, *(image.ref for image in result.images)]:
            self._images[ref.citation_id] = ref

    def evidence(self) -> list[EvidenceItem]:
        """Every evidence item any call returned, first appearance first."""
        return list(self._evidence.values())

    def facts(self) -> dict[str, EvidenceFacts]:
        return dict(self._facts)

    def image_refs(self) -> list[ImageRef]:
        return list(self._images.values())


class _Refused(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


def _parse_arguments(arguments: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise _Refused(
                "invalid_arguments", f"arguments are not JSON ({exc.msg} at char {exc.pos})"
            ) from exc
    else:
        parsed = arguments
    if not isinstance(parsed, Mapping):
        raise _Refused("invalid_arguments", "arguments must be a JSON object")
    return dict(parsed)

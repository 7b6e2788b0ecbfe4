"""The JSON schema of one agent step, and reading the model's answer back as an action.

A step's answer is one of: a call of one registered tool with that tool's own argument schema, or the
decision to write the report. Under constrained decoding the schema is the grammar, so even an untrained
model emits a call the registry can parse. The patient is pinned in the grammar (``const``) so a model
cannot spend a step asking about anyone else; the registry still refuses other patients, which is what
protects a model decoded without the grammar.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

WRITE_REPORT = "write_report"


class AgentAction(BaseModel):
    """What the model asked for in one step: a tool call (``tool`` and ``arguments``) or the report."""

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @property
    def writes_report(self) -> bool:
        return self.tool == WRITE_REPORT


class ActionParseError(ValueError):
    """The model's answer is not an action (unconstrained output, or a generation cut off)."""


def _pin_patient(parameters: Mapping[str, Any], patient_id: str) -> dict[str, Any]:
    pinned = copy.deepcopy(dict(parameters))
    properties = pinned.get("properties", {})
    if "patient_id" in properties:
        properties["patient_id"] = {"type": "string", "const": patient_id}
    return pinned


def action_schema(tool_schemas: Sequence[Mapping[str, Any]], patient_id: str) -> dict[str, Any]:
    """``anyOf``: per tool ``{"tool": name, "arguments": {...}}``, and ``{"tool": "write_report"}``.

    ``tool_schemas`` are the registry's declarations (``ToolRegistry.schemas()``); an empty list leaves
    only the report. Raises ValueError when a tool uses the reserved name ``write_report``.
    """
    options: list[dict[str, Any]] = []
    for declaration in tool_schemas:
        name = str(declaration["name"])
        if name == WRITE_REPORT:
            raise ValueError(f"tool name {WRITE_REPORT!r} is reserved for the agent's report step")
        options.append(
            {
                "type": "object",
                "properties": {
                    "tool": {"type": "string", "const": name},
                    "arguments": _pin_patient(declaration["parameters"], patient_id),
                },
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    options.append(
        {
            "type": "object",
            "properties": {"tool": {"type": "string", "const": WRITE_REPORT}},
            "required": ["tool"],
            "additionalProperties": False,
        }
    )
    return {"anyOf": options}


def parse_action(text: str) -> AgentAction:
    """The action in the model's answer; raises ActionParseError saying what is wrong (no patient data)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionParseError(f"answer is not JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(raw, dict):
        raise ActionParseError("answer must be a JSON object")
    tool = raw.get("tool")
    if not isinstance(tool, str) or not tool:
        raise ActionParseError('answer has no "tool" string')
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ActionParseError('"arguments" must be a JSON object')
    return AgentAction(tool=tool, arguments=arguments)

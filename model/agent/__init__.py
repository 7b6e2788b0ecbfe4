"""The tool-using agent that drafts a report: context, bounded tool calls, then the cited report.

Public API: ``run_agent``, ``StepGenerator``, ``action_schema``, ``parse_action``, ``AgentAction``,
``ActionParseError``, ``WRITE_REPORT``.
"""

from model.agent.action_schema import (
    WRITE_REPORT,
    ActionParseError,
    AgentAction,
    action_schema,
    parse_action,
)
from model.agent.loop import StepGenerator, run_agent

__all__ = [
    "WRITE_REPORT",
    "ActionParseError",
    "AgentAction",
    "StepGenerator",
    "action_schema",
    "parse_action",
    "run_agent",
]

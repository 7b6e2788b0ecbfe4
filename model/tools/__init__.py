"""The tool registry: typed, patient-scoped tools whose results carry citable evidence.

Public API: ``Tool``, ``ToolResult``, ``ToolFailure``, ``PatientScopedArguments``, ``PatientScope``,
``ToolRegistry``, ``ToolOutcome``. Implementations that do I/O live in ``integrations.tools``.
"""

from model.tools.registry import ToolOutcome, ToolRegistry
from model.tools.spec import PatientScope, PatientScopedArguments, Tool, ToolFailure, ToolResult

__all__ = [
    "PatientScope",
    "PatientScopedArguments",
    "Tool",
    "ToolFailure",
    "ToolOutcome",
    "ToolRegistry",
    "ToolResult",
]

"""The tool registry: typed, patient-scoped tools whose results carry citable evidence.

Public API: ``Tool``, ``ToolResult``, ``ToolImage``, ``ToolFailure``, ``PatientScopedArguments``,
``PatientScope``, ``ToolRegistry``, ``ToolOutcome``. Implementations doing I/O: ``integrations.tools``.
"""

from model.tools.registry import ToolOutcome, ToolRegistry
from model.tools.spec import (
    PatientScope,
    PatientScopedArguments,
    Tool,
    ToolFailure,
    ToolImage,
    ToolResult,
)

__all__ = [
    "PatientScope",
    "PatientScopedArguments",
    "Tool",
    "ToolFailure",
    "ToolImage",
    "ToolOutcome",
    "ToolRegistry",
    "ToolResult",
]

"""The tools the agent may call for one study: its images, the patient's FHIR record, and knowledge.

Every tool is scoped to the study's patient by the registry; FHIR tools exist only when the study was matched
to a FHIR Patient, so an unmatched study can never read anybody's record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from integrations.fhir.client import FhirClient
from integrations.tools.fhir_tools import fhir_tools
from integrations.tools.icd10cm import icd10cm_tools
from integrations.tools.imaging import imaging_tools
from integrations.tools.rare_disease import fhir_active_conditions, rare_disease_tools
from integrations.worker_runtime import WorkerRuntime
from model.dicom_source import DicomFile
from model.tools import Tool, ToolRegistry


@contextmanager
def study_tool_registries(
    runtime: WorkerRuntime, patient_id: str, spool_paths: Sequence[DicomFile], *, patient_matched: bool
) -> Iterator[Callable[[], ToolRegistry]]:
    """Yields a factory: each attempt at a study (e.g. a retry with fewer images) gets a fresh budget."""
    tools: list[Tool[Any]] = [*imaging_tools(list(spool_paths)), *icd10cm_tools()]
    if not patient_matched or not runtime.fhir.base_url:
        yield lambda: ToolRegistry(patient_id, tools)
        return
    with FhirClient.from_config(runtime.fhir) as client:
        record_tools = [*fhir_tools(client)]
        if runtime.knowledge_tools:
            record_tools += rare_disease_tools(fhir_active_conditions(client))
        yield lambda: ToolRegistry(patient_id, [*tools, *record_tools])

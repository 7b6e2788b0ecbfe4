"""Match a study's DICOM PatientID to the FHIR Patient and read the context the model will cite."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from integrations.fhir.client import FhirClient
from integrations.fhir.errors import FhirRequestError
from integrations.fhir.patient_record import PatientRecord, read_patient_record
from integrations.tools.evidence import evidence_of
from integrations.worker_runtime import WorkerRuntime
from model.context import PatientContext
from model.verification import EvidenceFacts

log = logging.getLogger(__name__)
ACTOR = "veritrace-worker"


def resolve_fhir_patient_id(client: FhirClient, dicom_patient_id: str) -> str | None:
    """PatientID is usually the MRN: search by identifier first, then accept it as a Patient id."""
    matches = client.search("Patient", {"identifier": dicom_patient_id})
    if len(matches) == 1:
        return str(matches[0]["id"])
    if len(matches) > 1:
        return None  # ambiguous: better no context than another patient's
    try:
        return str(client.read("Patient", dicom_patient_id)["id"])
    except FhirRequestError:
        return None


@dataclass(frozen=True)
class StudyContext:
    """What the model may cite, the structured facts the verifier checks against, and whose record it is."""

    context: PatientContext
    facts: dict[str, EvidenceFacts]
    patient_ref: str | None


def read_context_for_study(
    runtime: WorkerRuntime, dicom_patient_id: str | None, study_uid: str
) -> StudyContext:
    """An unmatched patient gets an empty, audited context (and no write-back).

    FhirUnavailable propagates: the task retries later rather than drafting without the record.
    """
    config = runtime.fhir
    reason = None
    if not config.base_url:
        reason = "no FHIR server configured"
    elif not dicom_patient_id:
        reason = "study has no PatientID"
    if reason is None:
        assert config.base_url is not None and dicom_patient_id is not None
        with FhirClient.from_config(config) as client:
            patient_id = resolve_fhir_patient_id(client, dicom_patient_id)
            record = read_patient_record(client, patient_id) if patient_id is not None else None
        if patient_id is not None and record is not None:
            patient_ref = f"Patient/{patient_id}"
            for read in record.reads:
                runtime.ledger.append(
                    "fhir.search" if read.query else "fhir.read",
                    ACTOR,
                    read.model_dump(mode="json"),
                    patient_ref=patient_ref,
                    study_uid=study_uid,
                )
            facts = {item.id: item_facts for item, item_facts in map(evidence_of, _resources(record))}
            context = PatientContext(patient_id=patient_id, evidence=record.to_evidence())
            return StudyContext(context=context, facts=facts, patient_ref=patient_ref)
        reason = "no unique FHIR Patient matches the study's PatientID"
    runtime.ledger.append("fhir.context.missing", ACTOR, {"reason": reason}, study_uid=study_uid)
    log.info("analysis of a study proceeds without patient context: %s", reason)
    return StudyContext(
        context=PatientContext(patient_id=dicom_patient_id or "unknown", evidence=[]),
        facts={},
        patient_ref=None,
    )


def _resources(record: PatientRecord) -> list[dict[str, Any]]:
    return [recorded.resource for recorded in record.resources()]

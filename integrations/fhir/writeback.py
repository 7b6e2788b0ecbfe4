"""Write a draft report back to the EHR: a preliminary, AI-labelled DiagnosticReport plus its Provenance.

The report is ``preliminary`` and carries the HL7 v3 ``AIAST`` (artificial intelligence asserted)
security label, so the EHR shows it as a machine draft and Veritrace never reads it back as evidence
(see ``patient_record``). Its ``Provenance`` names the model as a ``Device`` agent (one Device per
weights digest, created once) and lists, as ``source`` entities, the exact FHIR resource versions and
DICOM instances the draft's statements cite. All three go in one transaction, so a report never
exists without its provenance. The write is idempotent on the identifier
``urn:veritrace:analysis|<analysis_id>``: a Celery redelivery returns the report already written.
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict

from integrations.fhir import codes
from integrations.fhir.client import FhirClient, check_id
from integrations.fhir.errors import FhirResponseError
from integrations.fhir.validation import validate_resource

log = logging.getLogger(__name__)

MODEL_WEIGHTS_IDENTIFIER = "urn:veritrace:model-weights"
AIAST = {"system": codes.V3_OBSERVATION_VALUE, "code": "AIAST", "display": "artificial intelligence asserted"}
DICOM_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
ANALYSIS_ID_RE = re.compile(r"^[A-Za-z0-9\-._:]{1,128}$")
FHIR_CITATION_RE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
IMAGE_CITATION_RE = re.compile(r"^img:([0-9]+(?:\.[0-9]+)*):([0-9]+)$")


class CitedStatement(Protocol):
    """What the write-back needs of a statement (``model.report.Statement`` has it)."""

    @property
    def text(self) -> str: ...

    @property
    def citations(self) -> list[str]: ...


class WrittenReport(BaseModel):
    """Ids of what is on the server; ``created`` is False when an earlier delivery had written it."""

    model_config = ConfigDict(frozen=True)

    id: str
    version_id: str | None
    provenance_id: str | None
    device_id: str | None
    created: bool

    @property
    def reference(self) -> str:
        return f"DiagnosticReport/{self.id}"


def write_draft_report(
    client: FhirClient,
    *,
    patient_id: str,
    study_uid: str,
    analysis_id: str,
    conclusion: str,
    statements: Sequence[CitedStatement],
    presented_text: str,
    model_device: dict[str, Any] | None,
    issued: datetime | None = None,
) -> WrittenReport:
    """Write (or find) the draft for ``analysis_id``; see the module docstring for what is written.

    ``model_device`` is the model identity (``family``, ``architecture``, ``weights_sha256``,
    ``untrained``, ... as in ``model.runtime.ModelIdentity``); ``None`` records an unidentified model.
    Raises ``ValueError`` for bad arguments or when the analysis id already belongs to another
    patient's report, ``FhirValidationError`` if a resource would not validate, and the client's
    errors for the server's answers.
    """
    check_id(patient_id, "patient_id")
    if not DICOM_UID_RE.match(study_uid) or len(study_uid) > 64:
        raise ValueError(f"study_uid must be a DICOM UID (digits and dots, at most 64), got {study_uid!r}")
    if not ANALYSIS_ID_RE.match(analysis_id):
        raise ValueError(f"analysis_id must match {ANALYSIS_ID_RE.pattern}, got {analysis_id!r}")
    if not conclusion.strip():
        raise ValueError("conclusion is empty")
    if not presented_text.strip():
        raise ValueError("presented_text is empty")
    when = (issued or datetime.now(UTC)).astimezone(UTC)
    existing = _existing_report(client, analysis_id, patient_id)
    sources = _source_entities(statements)
    device = _device(model_device)
    device_query = urlencode({"identifier": _identifier_token(device["identifier"][0])})

    if existing is not None:
        provenances = client.search("Provenance", {"target": f"DiagnosticReport/{existing['id']}"})
        if provenances:
            who = str(((provenances[0].get("agent") or [{}])[0].get("who") or {}).get("reference", ""))
            return WrittenReport(
                id=existing["id"],
                version_id=(existing.get("meta") or {}).get("versionId"),
                provenance_id=provenances[0]["id"],
                device_id=who.split("/")[-1] if who.startswith("Device/") else None,
                created=False,
            )
        # Written by a client that did not use a transaction: complete it rather than duplicate it.
        device_written = client.create(device, if_none_exist=device_query)
        provenance = _provenance(
            f"DiagnosticReport/{existing['id']}", f"Device/{device_written.resource_id}", sources, when
        )
        validate_resource(provenance)
        provenance_written = client.create(provenance)
        return WrittenReport(
            id=existing["id"],
            version_id=(existing.get("meta") or {}).get("versionId"),
            provenance_id=provenance_written.resource_id,
            device_id=device_written.resource_id,
            created=False,
        )

    report_url, device_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    report = _report(patient_id, study_uid, analysis_id, conclusion, presented_text, when)
    provenance = _provenance(report_url, device_url, sources, when)
    for resource in (device, report, provenance):
        validate_resource(resource)
    analysis_query = urlencode({"identifier": f"{codes.ANALYSIS_IDENTIFIER}|{analysis_id}"})
    response = client.transaction({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": device_url, "resource": device,
             "request": {"method": "POST", "url": "Device", "ifNoneExist": device_query}},
            {"fullUrl": report_url, "resource": report,
             "request": {"method": "POST", "url": "DiagnosticReport", "ifNoneExist": analysis_query}},
            {"resource": provenance, "request": {"method": "POST", "url": "Provenance"}},
        ],
    })  # fmt: skip
    entries = response.get("entry") or []
    if len(entries) != 3:
        raise FhirResponseError(f"transaction-response has {len(entries)} entries, expected 3")
    device_id, _, _ = _written(entries[0], "Device")
    report_id, report_version, report_status = _written(entries[1], "DiagnosticReport")
    provenance_id, _, _ = _written(entries[2], "Provenance")
    log.info("draft DiagnosticReport/%s written for analysis %s", report_id, analysis_id)
    return WrittenReport(
        id=report_id,
        version_id=report_version,
        provenance_id=provenance_id,
        device_id=device_id,
        created=report_status.startswith("201"),
    )


def _existing_report(client: FhirClient, analysis_id: str, patient_id: str) -> dict[str, Any] | None:
    found = client.search("DiagnosticReport", {"identifier": f"{codes.ANALYSIS_IDENTIFIER}|{analysis_id}"})
    if not found:
        return None
    if len(found) > 1:
        raise FhirResponseError(f"{len(found)} DiagnosticReports carry analysis id {analysis_id}")
    report = found[0]
    if (report.get("subject") or {}).get("reference", "").split("/")[-2:] != ["Patient", patient_id]:
        raise ValueError(f"analysis id {analysis_id} is already the identifier of another patient's report")
    return report


def _report(
    patient_id: str, study_uid: str, analysis_id: str, conclusion: str, presented_text: str, when: datetime
) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [AIAST]},
        "identifier": [{"system": codes.ANALYSIS_IDENTIFIER, "value": analysis_id}],
        "status": "preliminary",
        "category": [{"coding": [{"system": codes.V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [
                {
                    "system": codes.LOINC,
                    "code": codes.DIAGNOSTIC_IMAGING_STUDY,
                    "display": "Diagnostic imaging study",
                }
            ],
            "text": "AI draft: diagnostic imaging study",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "issued": _instant(when),
        "imagingStudy": [{"identifier": {"system": codes.DICOM_UID, "value": f"urn:oid:{study_uid}"}}],
        "conclusion": conclusion,
        "presentedForm": [
            {
                "contentType": "text/markdown",
                "data": base64.b64encode(presented_text.encode()).decode("ascii"),
                "title": "Veritrace AI draft (preliminary, needs clinician review)",
                "creation": _instant(when),
            }
        ],
    }


def _device(model: dict[str, Any] | None) -> dict[str, Any]:
    """One Device per weights digest; a model without a digest is recorded as unidentified."""
    model = model or {}
    digest = model.get("weights_sha256")
    name = str(model.get("architecture") or model.get("family") or "unidentified model")
    device: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [
            {"system": MODEL_WEIGHTS_IDENTIFIER, "value": f"sha256:{digest}" if digest else "unidentified"}
        ],
        "status": "active",
        "deviceName": [{"name": name, "type": "model-name"}],
        "type": {"text": "AI model (vision-language) run by Veritrace"},
    }
    versions = [
        {"type": {"text": key}, "value": str(model[key])}
        for key in ("family", "model_type", "dtype")
        if model.get(key)
    ]
    if digest:
        versions.append({"type": {"text": "weights_sha256"}, "value": str(digest)})
    if versions:
        device["version"] = versions
    if model.get("untrained"):
        device["note"] = [{"text": "Randomly initialised test weights: output is not clinical."}]
    return device


def _provenance(target: str, device: str, sources: list[dict[str, Any]], when: datetime) -> dict[str, Any]:
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"security": [AIAST]},
        "target": [{"reference": target}],
        "recorded": _instant(when),
        "activity": {"coding": [{"system": codes.V3_DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [
            {
                "type": {
                    "coding": [
                        {"system": codes.PROVENANCE_PARTICIPANT_TYPE, "code": "author", "display": "Author"}
                    ]
                },
                "who": {"reference": device},
            }
        ],
    }
    if sources:
        provenance["entity"] = sources
    return provenance


def _source_entities(statements: Sequence[CitedStatement]) -> list[dict[str, Any]]:
    """Cited FHIR versions and DICOM instances, once each in first-cited order; other citations
    (tool results) have no FHIR reference and stay in the trace only."""
    seen: set[str] = set()
    entities: list[dict[str, Any]] = []
    for statement in statements:
        if not statement.text.strip():
            raise ValueError("a statement has no text")
        for citation in statement.citations:
            if citation in seen:
                continue
            seen.add(citation)
            if FHIR_CITATION_RE.match(citation):
                entities.append({"role": "source", "what": {"reference": citation}})
            elif image := IMAGE_CITATION_RE.match(citation):
                identifier = {"system": codes.DICOM_UID, "value": f"urn:oid:{image.group(1)}"}
                entities.append(
                    {
                        "role": "source",
                        "what": {"identifier": identifier, "display": f"frame {image.group(2)}"},
                    }
                )
    return entities


def _written(entry: dict[str, Any], resource_type: str) -> tuple[str, str | None, str]:
    """(id, versionId, status) of one transaction-response entry, from its resource or its location."""
    response = entry.get("response") or {}
    status = str(response.get("status", ""))
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") == resource_type and resource.get("id"):
        return str(resource["id"]), (resource.get("meta") or {}).get("versionId"), status
    parts = str(response.get("location", "")).split("/")
    if resource_type in parts and parts.index(resource_type) + 1 < len(parts):
        at = parts.index(resource_type)
        version = parts[at + 3] if len(parts) > at + 3 and parts[at + 2] == "_history" else None
        return parts[at + 1], version, status
    raise FhirResponseError(
        f"transaction-response entry for {resource_type} has neither resource nor location"
    )


def _identifier_token(identifier: dict[str, str]) -> str:
    return f"{identifier['system']}|{identifier['value']}"


def _instant(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"

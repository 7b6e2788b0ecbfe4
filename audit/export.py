"""Ledger entries as a FHIR R4 Bundle of AuditEvents (IHE BALP) plus Provenance for AI-drafted reports.

Mapping of entry kinds to IHE Basic Audit Log Patterns (profiles.ihe.net/ITI/BALP):

===================================  ===============================  ======  ==========================
kind                                 BALP profile (when a patient)    action  subtype (restful-interaction)
===================================  ===============================  ======  ==========================
fhir.read, review.viewed             IHE.BasicAudit.PatientRead       R       read
fhir.search                          IHE.BasicAudit.PatientQuery      E       search-type
fhir.write, report.drafted,          IHE.BasicAudit.PatientCreate     C       create
dicom.received
everything else                      (none: DCM 110100 Application    E       urn:veritrace:audit-kind
                                     Activity)
===================================  ===============================  ======  ==========================

Every AuditEvent names its ledger entry (index, leaf hash, payload digest) so a reviewer can ask the
ledger for its inclusion proof. Validated with ``fhir.resources.R4B`` (R4B's AuditEvent and Provenance
are R4's).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from audit.entry import LedgerEntry

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
KIND_SYSTEM = "urn:veritrace:audit-kind"
LEDGER_SYSTEM = "urn:veritrace:audit-ledger"

READ_KINDS = frozenset({"fhir.read", "review.viewed"})
QUERY_KINDS = frozenset({"fhir.search"})
CREATE_KINDS = frozenset({"fhir.write", "report.drafted", "dicom.received"})


def export_bundle(entries: Iterable[LedgerEntry], *, origin: str) -> dict[str, Any]:
    """A validated FHIR R4 ``collection`` Bundle for the given entries, as JSON-ready data."""
    resources: list[dict[str, Any]] = []
    for entry in entries:
        resources.append(audit_event(entry, origin=origin))
        if entry.kind == "report.drafted":
            resources.append(provenance(entry))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{_urn_id(r)}", "resource": r} for r in resources],
    }
    Bundle.model_validate(bundle)  # raises on anything R4 would reject
    return bundle


def _urn_id(resource: dict[str, Any]) -> str:
    # Stable per entry, so two exports of one entry name it the same (RFC 4122 name-based form is
    # not needed: the ledger index is already unique within the origin).
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{LEDGER_SYSTEM}:{resource['resourceType']}:{resource['id']}"))


def audit_event(entry: LedgerEntry, *, origin: str) -> dict[str, Any]:
    patient = entry.patient_ref
    if patient and entry.kind in READ_KINDS:
        profile, action, subtype = "PatientRead", "R", _coding(RESTFUL_INTERACTION, "read", "read")
    elif patient and entry.kind in QUERY_KINDS:
        profile, action, subtype = (
            "PatientQuery",
            "E",
            _coding(RESTFUL_INTERACTION, "search-type", "search type"),
        )
    elif patient and entry.kind in CREATE_KINDS:
        profile, action, subtype = "PatientCreate", "C", _coding(RESTFUL_INTERACTION, "create", "create")
    else:
        profile, action, subtype = None, "E", _coding(KIND_SYSTEM, entry.kind, entry.kind)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"ledger-{entry.index}",
        "type": _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation")
        if profile
        else _coding(DCM, "110100", "Application Activity"),
        "subtype": [subtype],
        "action": action,
        "recorded": entry.recorded_at,
        "outcome": "0",
        "agent": [
            {
                "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
                "who": {"display": entry.actor},
                "requestor": True,
            },
            {
                "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
                "who": {"display": origin},
                "requestor": False,
            },
        ],
        "source": {
            "observer": {"display": origin},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": [_ledger_entity(entry, query=profile == "PatientQuery")],
    }
    if profile:
        event["meta"] = {"profile": [BALP + profile]}
    if patient:
        event["entity"].insert(
            0,
            {
                "what": {"reference": patient},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            },
        )
    if entry.study_uid:
        event["entity"].append(
            {
                "what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{entry.study_uid}"}},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "3", "Report"),
                "description": "DICOM study",
            }
        )
    return event


def _ledger_entity(entry: LedgerEntry, *, query: bool) -> dict[str, Any]:
    resource = (entry.payload or {}).get("resource")
    what: dict[str, Any] = (
        {"reference": resource}
        if isinstance(resource, str) and "/" in resource
        else {"identifier": {"system": LEDGER_SYSTEM, "value": str(entry.index)}}
    )
    entity: dict[str, Any] = {
        "what": what,
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "24", "Query")
        if query
        else _coding(OBJECT_ROLE, "4", "Domain Resource"),
        "detail": [
            {"type": "ledger-index", "valueString": str(entry.index)},
            {"type": "leaf-hash", "valueString": entry.leaf_hash},
            {"type": "payload-digest", "valueString": entry.payload_digest},
        ],
    }
    if query:
        text = (entry.payload or {}).get("query")
        entity["query"] = base64.b64encode(
            str(text if isinstance(text, str) else entry.kind).encode()
        ).decode()
    return entity


def provenance(entry: LedgerEntry) -> dict[str, Any]:
    """Provenance of an AI-drafted report: the model (a Device) is its author, the ledger entry its source.

    Reads ``report_ref`` ("DiagnosticReport/<id>") and ``model`` (a name, or {"name": ...}) from the payload.
    """
    payload = entry.payload or {}
    report = payload.get("report_ref")
    model = payload.get("model")
    if isinstance(model, dict):
        device_name = str(model.get("name", "AI model"))
    else:
        device_name = model if isinstance(model, str) else "AI model"
    target = (
        {"reference": report}
        if isinstance(report, str) and "/" in report
        else {"identifier": {"system": LEDGER_SYSTEM, "value": str(entry.index)}}
    )
    return {
        "resourceType": "Provenance",
        "id": f"ledger-{entry.index}",
        "target": [target],
        "recorded": entry.recorded_at,
        "agent": [
            {
                "type": {"coding": [_coding(PROVENANCE_AGENT_TYPE, "author", "Author")]},
                "who": {"type": "Device", "display": device_name},
            },
            {
                "type": {"coding": [_coding(PROVENANCE_AGENT_TYPE, "assembler", "Assembler")]},
                "who": {"display": entry.actor},
            },
        ],
        "entity": [
            {
                "role": "source",
                "what": {"identifier": {"system": LEDGER_SYSTEM, "value": str(entry.index)}},
            }
        ],
    }


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}

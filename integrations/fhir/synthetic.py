"""Deterministic synthetic patients for the demo and the tests, as FHIR R4 resources.

The demo needs a patient record that exercises every check Veritrace makes: kidney function trends
before contrast, an iodinated-contrast allergy, a gadolinium allergy, a pregnancy, anticoagulation, a
prior imaging report to compare against. Everything is generated from fixed profiles plus a seeded
``random.Random`` per patient (seeded with a string, which Python hashes with SHA-512, so the values are
the same in every process and on every machine); dates count back from a fixed ``anchor`` day. The same
arguments therefore always give byte-identical resources with the same ids (``vt-demo-1-...``), and
``load_synthetic_patients`` can compare before writing, so loading twice writes nothing the second time.
All of it is tagged ``HTEST`` (test health data) and the names are obviously fictitious.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from integrations.fhir import codes
from integrations.fhir.client import FhirClient
from integrations.fhir.validation import validate_resource

log = logging.getLogger(__name__)

DEFAULT_ANCHOR = date(2026, 10, 2)
DEFAULT_SEED = 20261002
LAB_DAYS_BACK = (270, 180, 90, 0)  # four results per lab, so trends exist
TEST_DATA_TAG = {"system": codes.V3_ACT_REASON, "code": "HTEST", "display": "test health data"}


@dataclass(frozen=True)
class SyntheticPatient:
    """One synthetic patient: its id and every resource of its record, Patient first."""

    patient_id: str
    resources: tuple[dict[str, Any], ...]

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == resource_type]


# ---------------- profiles ----------------
# (label, start value, change per step, decimals): values drift from start by `step` per result, plus noise.
_Lab = tuple[str, float, float, int]
_Problem = tuple[
    str, str, str, str, str
]  # SNOMED code, SNOMED display, ICD-10-CM code, ICD-10-CM display, status
_Med = tuple[str, str, str, str]  # RxNorm code, display, dosage text, status
_Allergy = tuple[
    str | None, str, str, str
]  # SNOMED substance code or None, display, text, manifestation code

_PROFILES: tuple[dict[str, Any], ...] = (
    {
        "given": "Alpha",
        "family": "Demo-Kidney",
        "gender": "male",
        "birth": date(1957, 4, 12),
        "problems": [
            (
                "44054006",
                "Diabetes mellitus type 2",
                "E11.9",
                "Type 2 diabetes mellitus without complications",
                "active",
            ),
            ("59621000", "Essential hypertension", "I10", "Essential (primary) hypertension", "active"),
            (
                "433144002",
                "Chronic kidney disease stage 3",
                "N18.30",
                "Chronic kidney disease, stage 3 unspecified",
                "active",
            ),
            ("233604007", "Pneumonia", "J18.9", "Pneumonia, unspecified organism", "resolved"),
        ],
        "labs": [
            ("eGFR", 68.0, -5.5, 0),
            ("creatinine", 1.12, 0.09, 2),
            ("potassium", 4.6, 0.1, 1),
            ("HbA1c", 7.4, 0.1, 1),
            ("hemoglobin", 13.1, -0.2, 1),
            ("sodium", 139.0, 0.0, 0),
        ],
        "mdrd_first": True,
        "meds": [
            (
                "861007",
                "metformin hydrochloride 500 MG Oral Tablet",
                "500 mg twice daily with meals",
                "active",
            ),
            ("314076", "lisinopril 10 MG Oral Tablet", "10 mg once daily", "active"),
        ],
        "allergies": [
            (
                "419098001",
                "Radiographic imaging contrast media (substance)",
                "Iodinated contrast media",
                "271807003",
            )
        ],
        "pregnant": None,
        "prior": (
            "24627-2",
            "CT Chest",
            "CT",
            200,
            "Solitary 6 mm solid nodule in the right upper lobe. No lymphadenopathy. "
            "Recommend follow-up CT in 6 to 12 months.",
        ),
    },
    {
        "given": "Bravo",
        "family": "Demo-Pregnancy",
        "gender": "female",
        "birth": date(1993, 9, 3),
        "problems": [("195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated", "active")],
        "labs": [
            ("hemoglobin", 12.4, -0.4, 1),
            ("eGFR", 112.0, 1.0, 0),
            ("creatinine", 0.62, -0.01, 2),
            ("platelets", 245.0, -8.0, 0),
        ],
        "mdrd_first": False,
        "meds": [
            (
                "745679",
                "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
                "2 puffs as needed",
                "active",
            )
        ],
        "allergies": [
            (None, "Gadolinium-based contrast agent", "Gadolinium-based contrast agent", "39579001")
        ],
        "pregnant": True,
        "prior": None,
    },
    {
        "given": "Charlie",
        "family": "Demo-Anticoagulated",
        "gender": "female",
        "birth": date(1946, 1, 28),
        "problems": [
            ("49436004", "Atrial fibrillation", "I48.91", "Unspecified atrial fibrillation", "active"),
            (
                "13645005",
                "Chronic obstructive lung disease",
                "J44.9",
                "Chronic obstructive pulmonary disease, unspecified",
                "active",
            ),
        ],
        "labs": [
            ("INR", 1.2, 0.0, 1),
            ("potassium", 5.0, 0.15, 1),
            ("eGFR", 58.0, -2.0, 0),
            ("creatinine", 1.05, 0.03, 2),
            ("hemoglobin", 11.8, -0.3, 1),
            ("platelets", 190.0, -5.0, 0),
        ],
        "mdrd_first": False,
        "meds": [
            ("1364445", "apixaban 5 MG Oral Tablet", "5 mg twice daily", "active"),
            (
                "745679",
                "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
                "2 puffs as needed",
                "active",
            ),
        ],
        "allergies": [("91936005", "Allergy to penicillin", "Penicillin", "271807003")],
        "pregnant": False,
        "prior": (
            "36643-5",
            "XR Chest 2 Views",
            "CR",
            400,
            "Hyperinflated lungs consistent with COPD. No focal consolidation. Heart size normal.",
        ),
    },
)

_MANIFESTATIONS = {"271807003": "Eruption of skin", "39579001": "Anaphylaxis"}


def generate_patients(
    count: int = 3, *, seed: int = DEFAULT_SEED, anchor: date = DEFAULT_ANCHOR
) -> list[SyntheticPatient]:
    """``count`` (1 to 3) patients ``vt-demo-1`` ... with their records; validated with fhir.resources.

    Same ``count``, ``seed`` and ``anchor``: same resources, byte for byte.
    """
    if not 1 <= count <= len(_PROFILES):
        raise ValueError(f"count must be between 1 and {len(_PROFILES)}, got {count}")
    patients = [_build(i + 1, _PROFILES[i], seed, anchor) for i in range(count)]
    for patient in patients:
        for resource in patient.resources:
            validate_resource(resource)
    return patients


def _build(number: int, profile: dict[str, Any], seed: int, anchor: date) -> SyntheticPatient:
    pid = f"vt-demo-{number}"
    rng = random.Random(f"{seed}:{pid}")
    builder = _RecordBuilder(pid, rng, anchor)
    builder.patient(profile)
    for problem in profile["problems"]:
        builder.condition(problem)
    for label, start, step, decimals in profile["labs"]:
        builder.lab_series(label, start, step, decimals, mdrd_first=profile["mdrd_first"] and label == "eGFR")
    builder.vitals()
    for med in profile["meds"]:
        builder.medication_request(med)
    for allergy in profile["allergies"]:
        builder.allergy(allergy)
    if profile["pregnant"] is not None:
        builder.pregnancy_status(profile["pregnant"])
    if profile["prior"] is not None:
        builder.prior_imaging(profile["prior"])
    return SyntheticPatient(pid, tuple(builder.resources))


class _RecordBuilder:
    """Accumulates one patient's resources; ids are ``<patient id>-<kind>-<n>``."""

    def __init__(self, pid: str, rng: random.Random, anchor: date) -> None:
        self.pid, self.rng, self.anchor = pid, rng, anchor
        self.resources: list[dict[str, Any]] = []
        self._counters: dict[str, int] = {}

    def _new(self, resource_type: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        rid = f"{self.pid}-{kind}-{self._counters[kind]}"
        resource = {
            "resourceType": resource_type,
            "id": rid,
            "meta": {"tag": [TEST_DATA_TAG]},
            "identifier": [{"system": codes.SYNTHETIC_IDENTIFIER, "value": rid}],
            **body,
        }
        self.resources.append(resource)
        return resource

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def _when(self, days_back: int) -> str:
        """A morning time ``days_back`` days before the anchor, in UTC, to the second."""
        moment = datetime.combine(self.anchor - timedelta(days=days_back), time(7, 0), tzinfo=UTC)
        moment += timedelta(minutes=self.rng.randrange(0, 240))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def patient(self, profile: dict[str, Any]) -> None:
        resource = {
            "resourceType": "Patient",
            "id": self.pid,
            "meta": {"tag": [TEST_DATA_TAG]},
            "identifier": [{"system": codes.SYNTHETIC_IDENTIFIER, "value": self.pid}],
            "active": True,
            "name": [{"use": "official", "family": profile["family"], "given": [profile["given"]]}],
            "gender": profile["gender"],
            "birthDate": profile["birth"].isoformat(),
        }
        self.resources.append(resource)

    def condition(self, problem: _Problem) -> None:
        snomed, snomed_display, icd, icd_display, status = problem
        onset = self._when(self.rng.randrange(400, 3000))
        body: dict[str, Any] = {
            "clinicalStatus": _cc(codes.CONDITION_CLINICAL, status),
            "verificationStatus": _cc(codes.CONDITION_VERIFICATION, "confirmed"),
            "category": [_cc(codes.CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": {
                "coding": [
                    {"system": codes.SNOMED, "code": snomed, "display": snomed_display},
                    {"system": codes.ICD10CM, "code": icd, "display": icd_display},
                ],
                "text": snomed_display,
            },
            "subject": self.subject,
            "onsetDateTime": onset,
            "recordedDate": onset,
        }
        if status == "resolved":
            body["abatementDateTime"] = self._when(self.rng.randrange(100, 380))
        self._new("Condition", "condition", body)

    def lab_series(self, label: str, start: float, step: float, decimals: int, *, mdrd_first: bool) -> None:
        for n, days_back in enumerate(LAB_DAYS_BACK):
            noise = self.rng.uniform(-0.25, 0.25) * abs(step)
            value = round(start + step * n + noise, decimals)
            test = codes.LABS["eGFR (MDRD)"] if mdrd_first and n == 0 else codes.LABS[label]
            self._new(
                "Observation",
                "lab",
                _quantity_obs(test, value, "laboratory", self.subject, self._when(days_back)),
            )

    def vitals(self) -> None:
        for days_back in (LAB_DAYS_BACK[-2], LAB_DAYS_BACK[-1]):
            when = self._when(days_back)
            systolic, diastolic = self.rng.randrange(118, 152), self.rng.randrange(68, 92)
            self._new(
                "Observation",
                "vital",
                {
                    "status": "final",
                    "category": [_cc(codes.OBSERVATION_CATEGORY, "vital-signs", "Vital Signs")],
                    "code": {
                        "coding": [
                            {
                                "system": codes.LOINC,
                                "code": codes.BLOOD_PRESSURE_PANEL,
                                "display": "Blood pressure panel with all children optional",
                            }
                        ],
                        "text": "Blood pressure",
                    },
                    "subject": self.subject,
                    "effectiveDateTime": when,
                    "component": [
                        {
                            "code": _loinc(codes.VITALS["systolic BP"]),
                            "valueQuantity": _qty(systolic, codes.VITALS["systolic BP"]),
                        },
                        {
                            "code": _loinc(codes.VITALS["diastolic BP"]),
                            "valueQuantity": _qty(diastolic, codes.VITALS["diastolic BP"]),
                        },
                    ],
                },
            )
            heart_rate = self.rng.randrange(58, 96)
            self._new(
                "Observation",
                "vital",
                _quantity_obs(codes.VITALS["heart rate"], heart_rate, "vital-signs", self.subject, when),
            )
            weight = round(self.rng.uniform(55, 95), 1)
            self._new(
                "Observation",
                "vital",
                _quantity_obs(codes.VITALS["weight"], weight, "vital-signs", self.subject, when),
            )

    def medication_request(self, med: _Med) -> None:
        rxnorm, display, dosage, status = med
        self._new(
            "MedicationRequest",
            "medication",
            {
                "status": status,
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": codes.RXNORM, "code": rxnorm, "display": display}],
                    "text": display,
                },
                "subject": self.subject,
                "authoredOn": self._when(self.rng.randrange(30, 700)),
                "dosageInstruction": [{"text": dosage}],
            },
        )

    def allergy(self, allergy: _Allergy) -> None:
        snomed, display, text, manifestation = allergy
        code: dict[str, Any] = {"text": text}
        if snomed is not None:
            code["coding"] = [{"system": codes.SNOMED, "code": snomed, "display": display}]
        self._new(
            "AllergyIntolerance",
            "allergy",
            {
                "clinicalStatus": _cc(codes.ALLERGY_CLINICAL, "active"),
                "verificationStatus": _cc(codes.ALLERGY_VERIFICATION, "confirmed"),
                "type": "allergy",
                "category": ["medication"],
                "criticality": "high",
                "code": code,
                "patient": self.subject,
                "recordedDate": self._when(self.rng.randrange(365, 2000)),
                "reaction": [
                    {
                        "manifestation": [
                            {
                                "coding": [
                                    {
                                        "system": codes.SNOMED,
                                        "code": manifestation,
                                        "display": _MANIFESTATIONS[manifestation],
                                    }
                                ]
                            }
                        ]
                    }
                ],
            },
        )

    def pregnancy_status(self, pregnant: bool) -> None:
        value = (
            (codes.SNOMED_PREGNANT, "Pregnant") if pregnant else (codes.SNOMED_NOT_PREGNANT, "Not pregnant")
        )
        self._new(
            "Observation",
            "pregnancy",
            {
                "status": "final",
                "category": [_cc(codes.OBSERVATION_CATEGORY, "social-history", "Social History")],
                "code": {
                    "coding": [
                        {"system": codes.LOINC, "code": codes.PREGNANCY_STATUS, "display": "Pregnancy status"}
                    ],
                    "text": "Pregnancy status",
                },
                "subject": self.subject,
                "effectiveDateTime": self._when(12),
                "valueCodeableConcept": {
                    "coding": [{"system": codes.SNOMED, "code": value[0], "display": value[1]}],
                    "text": value[1],
                },
            },
        )

    def prior_imaging(self, prior: tuple[str, str, str, int, str]) -> None:
        loinc, title, modality, days_back, conclusion = prior
        when = self._when(days_back)
        study_uid = _uid_2_25(f"{self.pid}:{loinc}:{days_back}:study")
        study = self._new(
            "ImagingStudy",
            "imagingstudy",
            {
                "status": "available",
                "subject": self.subject,
                "started": when,
                "modality": [{"system": codes.DICOM_DCM, "code": modality}],
                "numberOfSeries": 1,
                "numberOfInstances": 1,
                "description": title,
                "series": [
                    {
                        "uid": _uid_2_25(f"{study_uid}:series:1"),
                        "number": 1,
                        "modality": {"system": codes.DICOM_DCM, "code": modality},
                        "numberOfInstances": 1,
                    }
                ],
            },
        )
        study["identifier"].append({"system": codes.DICOM_UID, "value": f"urn:oid:{study_uid}"})
        self._new(
            "DiagnosticReport",
            "report",
            {
                "status": "final",
                "category": [_cc(codes.V2_0074, "RAD", "Radiology")],
                "code": {"coding": [{"system": codes.LOINC, "code": loinc, "display": title}], "text": title},
                "subject": self.subject,
                "effectiveDateTime": when,
                "issued": when.replace("Z", ".000Z"),
                "imagingStudy": [{"reference": f"ImagingStudy/{study['id']}"}],
                "conclusion": conclusion,
            },
        )


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _loinc(test: codes.LabTest) -> dict[str, Any]:
    return {
        "coding": [{"system": codes.LOINC, "code": test.loinc, "display": test.display}],
        "text": test.label,
    }


def _qty(value: float, test: codes.LabTest) -> dict[str, Any]:
    return {"value": value, "unit": test.unit or test.ucum, "system": codes.UCUM, "code": test.ucum}


def _quantity_obs(
    test: codes.LabTest, value: float, category: str, subject: dict[str, str], when: str
) -> dict[str, Any]:
    displays = {"laboratory": "Laboratory", "vital-signs": "Vital Signs"}
    return {
        "status": "final",
        "category": [_cc(codes.OBSERVATION_CATEGORY, category, displays[category])],
        "code": _loinc(test),
        "subject": subject,
        "effectiveDateTime": when,
        "valueQuantity": _qty(value, test),
    }


def _uid_2_25(name: str) -> str:
    """A DICOM UID under the 2.25 (UUID) root, derived from ``name`` so it is stable."""
    return f"2.25.{uuid.UUID(bytes=hashlib.sha256(name.encode()).digest()[:16], version=4).int}"


# ---------------- loading ----------------


def load_synthetic_patients(client: FhirClient, patients: Sequence[SyntheticPatient]) -> list[str]:
    """Write ``patients`` to the server, one transaction per patient; return their ids.

    Idempotent: resources already stored with the same content (``meta.versionId`` and
    ``meta.lastUpdated`` aside) are not written again, so a second load creates no duplicates and no
    new versions, and evidence that cites version 1 stays current. Uses update-as-create (``PUT``
    with our ids), which the server must allow for client-assigned ids.
    """
    for patient in patients:
        stored = _stored_versions(client, patient)
        changed = [
            r
            for r in patient.resources
            if _comparable(stored.get((r["resourceType"], r["id"]))) != _comparable(r)
        ]
        if changed:
            client.transaction(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in changed
                    ],
                }
            )
        log.info(
            "synthetic patient %s: %d of %d resources written",
            patient.patient_id,
            len(changed),
            len(patient.resources),
        )
    return [p.patient_id for p in patients]


def _stored_versions(client: FhirClient, patient: SyntheticPatient) -> dict[tuple[str, str], dict[str, Any]]:
    ids_by_type: dict[str, list[str]] = {}
    for r in patient.resources:
        ids_by_type.setdefault(r["resourceType"], []).append(r["id"])
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for resource_type, ids in ids_by_type.items():
        for found in client.search(resource_type, {"_id": ",".join(ids), "_count": str(len(ids))}):
            stored[(resource_type, found["id"])] = found
    return stored


def _comparable(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    if resource is None:
        return None
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    return {**resource, "meta": meta}

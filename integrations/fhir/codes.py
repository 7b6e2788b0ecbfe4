"""Code systems and the clinical codes Veritrace reads and writes.

One place for the URIs (a typo in a system URI silently breaks every search that uses it) and for the
LOINC codes of the labs the model gets as context, with the UCUM unit each is reported in.
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section (RAD, LAB, ...)
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"  # security labels
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"

SYNTHETIC_IDENTIFIER = "urn:veritrace:synthetic"
ANALYSIS_IDENTIFIER = "urn:veritrace:analysis"

PREGNANCY_STATUS = "82810-3"
SNOMED_PREGNANT = "77386006"
SNOMED_NOT_PREGNANT = "60001007"
DIAGNOSTIC_IMAGING_STUDY = "18748-4"


@dataclass(frozen=True)
class LabTest:
    """A LOINC-coded quantitative test: its display name, short label and UCUM unit."""

    loinc: str
    display: str
    label: str
    ucum: str
    unit: str  # human-readable unit for prompts and card text


LABS: dict[str, LabTest] = {
    lab.label: lab
    for lab in (
        LabTest(
            "62238-1",
            "Glomerular filtration rate/1.73 sq M.predicted [CKD-EPI]",
            "eGFR",
            "mL/min/{1.73_m2}",
            "mL/min/1.73m2",
        ),
        LabTest(
            "33914-3",
            "Glomerular filtration rate/1.73 sq M.predicted [MDRD]",
            "eGFR (MDRD)",
            "mL/min/{1.73_m2}",
            "mL/min/1.73m2",
        ),
        LabTest("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "creatinine", "mg/dL", "mg/dL"),
        LabTest("718-7", "Hemoglobin [Mass/volume] in Blood", "hemoglobin", "g/dL", "g/dL"),
        LabTest("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "potassium", "mmol/L", "mmol/L"),
        LabTest("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "sodium", "mmol/L", "mmol/L"),
        LabTest("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "HbA1c", "%", "%"),
        LabTest(
            "777-3", "Platelets [#/volume] in Blood by Automated count", "platelets", "10*3/uL", "10^3/uL"
        ),
        LabTest("6301-6", "INR in Platelet poor plasma by Coagulation assay", "INR", "{INR}", ""),
    )
}

VITALS: dict[str, LabTest] = {
    vital.label: vital
    for vital in (
        LabTest("8867-4", "Heart rate", "heart rate", "/min", "/min"),
        LabTest("29463-7", "Body weight", "weight", "kg", "kg"),
        LabTest("8302-2", "Body height", "height", "cm", "cm"),
        LabTest("8480-6", "Systolic blood pressure", "systolic BP", "mm[Hg]", "mmHg"),
        LabTest("8462-4", "Diastolic blood pressure", "diastolic BP", "mm[Hg]", "mmHg"),
    )
}
BLOOD_PRESSURE_PANEL = "85354-9"

BY_LOINC: dict[str, LabTest] = {t.loinc: t for t in (*LABS.values(), *VITALS.values())}

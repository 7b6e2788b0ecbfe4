"""What the index stores about one received instance, and the error for bytes that cannot be indexed."""

from __future__ import annotations

from dataclasses import dataclass


class UnreadableDataset(ValueError):
    """The received bytes are not a DICOM dataset we can index; the message never contains values."""


@dataclass(frozen=True)
class InstanceHeader:
    """What the index stores about one instance. `patient_id` is PHI: never log it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part: str | None
    patient_id: str | None
    accession_number: str | None

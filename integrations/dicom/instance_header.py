"""What the index stores about one received instance, and the error for bytes that cannot be indexed."""

from __future__ import annotations

from dataclasses import dataclass, fields


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

    def __post_init__(self) -> None:
        """Refuse what the index cannot store, so the SCP answers 0xC000 before spooling anything rather
        than 0x0110 ("index down, send again") after: PostgreSQL text holds no NUL, UIDs fit 64 chars."""
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and "\x00" in value:
                raise UnreadableDataset(f"{item.name} contains a NUL character")
        if len(self.transfer_syntax_uid) > 64:
            raise UnreadableDataset("transfer_syntax_uid is longer than a UID may be (64)")

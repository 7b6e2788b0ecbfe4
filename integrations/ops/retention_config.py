"""How long the spool and the decision traces are kept; composed into the one Settings by cds/settings.py."""

from pydantic import BaseModel, Field


class RetentionConfig(BaseModel):
    """None keeps forever, the default: deleting is irreversible and the period is the hospital's legal
    decision (it differs by country and record type), so the software never picks one on its own."""

    # Spool files of finished studies, counted from the study's last activity.
    spool_days: int | None = Field(default=None, ge=1)
    # Decision traces stored with analyses (the ledger keeps its own entries forever).
    trace_days: int | None = Field(default=None, ge=1)
    # How often the dicom process runs the purge.
    interval_s: float = Field(default=6 * 3600.0, gt=0)

    @property
    def enabled(self) -> bool:
        return self.spool_days is not None or self.trace_days is not None

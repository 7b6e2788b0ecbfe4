"""What the DICOM side needs to know; composed into the one Settings by cds/settings.py."""

from pathlib import Path

from pydantic import BaseModel, Field


class DicomConfig(BaseModel):
    ae_title: str = "VERITRACE"
    host: str = "127.0.0.1"
    port: int = 11112
    spool_dir: Path
    stable_age_s: float = 5.0
    # Empty means "accept any calling AE"; a hospital lists its PACS here.
    allowed_calling_aets: list[str] = Field(default_factory=list)
    max_associations: int = 10
    # Refuse new instances (0xA700) below this much free space on the spool's filesystem.
    min_free_bytes: int = 512 * 1024 * 1024

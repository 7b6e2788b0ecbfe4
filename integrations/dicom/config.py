"""What the DICOM side needs to know; composed into the one Settings by cds/settings.py."""

from pathlib import Path

from pydantic import BaseModel, Field, field_validator


class RoutingRules(BaseModel):
    """Which received instances are analysed. Everything is stored; routing only selects for analysis.

    An instance is analysed when its modality is listed (empty list: any modality), its SOP class does not
    start with an excluded prefix, and its body part is listed (empty list: any body part).
    """

    modalities: list[str] = Field(default_factory=lambda: ["CT", "CR", "DX", "MR", "MG", "US", "PT", "XA"])
    excluded_sop_class_prefixes: list[str] = Field(
        default_factory=lambda: [
            "1.2.840.10008.5.1.4.1.1.88.",  # Structured Reports (includes our own SR coming back)
            "1.2.840.10008.5.1.4.1.1.11.",  # Presentation States
            "1.2.840.10008.5.1.4.1.1.481.",  # Radiotherapy objects
            "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated documents (PDF, CDA)
        ]
    )
    body_parts: list[str] = Field(default_factory=list)

    def selects(self, modality: str | None, sop_class_uid: str, body_part: str | None) -> bool:
        if self.modalities and (modality or "").upper() not in {m.upper() for m in self.modalities}:
            return False
        if any(sop_class_uid.startswith(prefix) for prefix in self.excluded_sop_class_prefixes):
            return False
        return not self.body_parts or (body_part or "").upper() in {b.upper() for b in self.body_parts}


class SrDestination(BaseModel):
    """The PACS that receives our draft SR by C-STORE."""

    ae_title: str
    host: str
    port: int
    max_attempts: int = 6
    # Delay before attempt n (n >= 2) is backoff_base_s * 2 ** (n - 2), capped at backoff_max_s.
    backoff_base_s: float = 5.0
    backoff_max_s: float = 600.0
    timeout_s: float = 30.0

    @property
    def label(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


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
    # --- added for the gateway (issue 5) ---
    # Reject associations whose called AE title is not ours (A-ASSOCIATE-RJ, called-AE not recognised).
    require_called_aet: bool = True
    # Further called AE titles this SCP answers to (one gateway behind several PACS routing names).
    additional_ae_titles: list[str] = Field(default_factory=list)
    # Empty means any host; otherwise only these peer IP addresses may connect.
    allowed_calling_hosts: list[str] = Field(default_factory=list)
    # Per calling AE override of stable_age_s (a CT scanner pushing slowly needs a longer quiet period).
    stable_age_by_calling_aet: dict[str, float] = Field(default_factory=dict)
    routing: RoutingRules = Field(default_factory=RoutingRules)
    # Largest P-DATA PDU we accept: larger PDUs mean far fewer Python-level round trips per instance.
    max_pdu_bytes: int = 4 * 1024 * 1024
    # fsync each spooled file before acknowledging it: C-STORE success then survives a power cut.
    fsync: bool = True
    network_timeout_s: float = 60.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # When set, peers must present a certificate signed by this CA (mutual TLS).
    tls_ca_file: Path | None = None
    # Where our draft SR goes; None disables SR export.
    sr_destination: SrDestination | None = None
    # Instances acknowledged but not yet indexed, at most; beyond it new ones are refused with 0xA700.
    intake_queue_capacity: int = 1000
    # Index rows committed per transaction by the indexer thread, at most.
    intake_batch_max: int = 200
    # One ledger entry per association and study, flushed at the latest after this many instances.
    ledger_batch_size: int = 256
    # Encrypt spooled files at rest with the key in this file (`veritrace spool create-key`); None: off.
    spool_key_file: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae_title_fits(cls, value: str) -> str:
        if not 0 < len(value.strip()) <= 16:
            raise ValueError(f"ae_title must be 1-16 characters, got {len(value.strip())}")
        return value.strip()

    @property
    def called_ae_titles(self) -> frozenset[str]:
        return frozenset([self.ae_title, *(title.strip() for title in self.additional_ae_titles)])

    def stable_age_for(self, calling_aet: str | None) -> float:
        if calling_aet is not None and calling_aet in self.stable_age_by_calling_aet:
            return self.stable_age_by_calling_aet[calling_aet]
        return self.stable_age_s

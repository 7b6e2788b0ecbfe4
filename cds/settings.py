"""The one Settings object, read from VERITRACE_* variables.

Each package declares the plain config it needs (DicomConfig, FhirConfig, ModelConfig, LedgerConfig,
StoreConfig); this module is the only place that knows the environment variable names and the embedded
defaults, so a single machine runs with no configuration at all and a cluster overrides a few URLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit.config import LedgerConfig
from audit.review.config import OidcConfig, ReviewConfig
from integrations.celery_app import (
    DEFAULT_ANALYSIS_TIME_LIMIT_S,
    DEFAULT_KILL_GRACE_S,
    DEFAULT_WRITEBACK_TIME_LIMIT_S,
    TaskTimeLimits,
)
from integrations.dicom.config import DicomConfig, RoutingRules, SrDestination
from integrations.fhir.config import FhirConfig
from integrations.fhir.smart_backend import SmartBackendConfig
from integrations.ops.retention_config import RetentionConfig
from integrations.store.config import StoreConfig
from model.config import ModelConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VERITRACE_", extra="ignore")

    home: Path = Path("var")
    database_url: str | None = None
    broker_url: str | None = None
    fhir_base_url: str | None = None
    fhir_timeout_s: float = 10.0
    # SMART Backend Services registration of the worker at the EHR (all of token URL, client id, key).
    fhir_smart_token_url: str | None = None
    fhir_smart_client_id: str | None = None
    fhir_smart_private_key_file: Path | None = None
    fhir_smart_key_id: str | None = None
    fhir_smart_algorithm: Literal["RS384", "ES384"] = "RS384"
    fhir_smart_scope: str = "system/Patient.read system/Observation.read system/DiagnosticReport.write"
    model_path: Path | None = None
    # Cap on tokens of one generated report; None keeps the runtime's default (room for a whole report).
    model_max_new_tokens: int | None = None
    # torch CPU threads per worker child; None: the cores shared among the pool's children. Set 1 where the
    # worker shares a small box with the api and dicom processes (see model/cpu_threads.py).
    model_cpu_threads: int | None = None
    # Let the agent rank rare diseases from HPO phenotypes (loads the HPO ontology once per worker).
    agent_knowledge_tools: bool = True
    # Structured JSON logs (patient data filtered out) and OpenTelemetry spans to a file.
    log_json: bool = False
    trace_file: Path | None = None
    # Celery time limits (s): past its limit a task is interrupted and fails (audited, dead-lettered); the
    # grace later its pool child is killed and replaced. Limit + grace stays under RabbitMQ's
    # consumer_timeout (30 min by default).
    analysis_time_limit_s: float = Field(default=DEFAULT_ANALYSIS_TIME_LIMIT_S, gt=0)
    writeback_time_limit_s: float = Field(default=DEFAULT_WRITEBACK_TIME_LIMIT_S, gt=0)
    task_kill_grace_s: float = Field(default=DEFAULT_KILL_GRACE_S, gt=0)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    public_base_url: str | None = None
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = "VERITRACE"
    dicom_allowed_calling_aets: list[str] = Field(default_factory=list)
    stable_age: float = 5.0
    spool_dir: Path | None = None
    # Encrypt spooled files at rest with the key in this file (`veritrace spool create-key`); unset: off.
    spool_key_file: Path | None = None
    dicom_allowed_calling_hosts: list[str] = Field(default_factory=list)
    dicom_max_associations: int = 10
    dicom_min_free_bytes: int = 512 * 1024 * 1024
    dicom_stable_age_by_calling_aet: dict[str, float] = Field(default_factory=dict)
    dicom_routing_modalities: list[str] | None = None
    dicom_tls_cert_file: Path | None = None
    dicom_tls_key_file: Path | None = None
    dicom_tls_ca_file: Path | None = None
    # Sync each received file, its directory entry and its intake-journal line before Success (a power
    # cut then loses nothing acknowledged). Off only on storage whose write cache survives power loss.
    dicom_fsync: bool = True
    dicom_network_timeout_s: float = Field(default=60.0, gt=0)
    dicom_intake_queue_capacity: int = Field(default=1000, ge=1)
    dicom_intake_batch_max: int = Field(default=200, ge=1)
    # Where draft SRs go back to (the PACS); unset disables SR export.
    sr_destination_ae: str | None = None
    sr_destination_host: str | None = None
    sr_destination_port: int | None = None
    # STOW-RS is off unless a PACS is given a bearer token here (secrets via env / secret files only).
    stow_tokens: list[str] = Field(default_factory=list, repr=False)
    # Machine access to /audit/entries (patient references); reviewers use /review instead.
    audit_api_tokens: list[str] = Field(default_factory=list, repr=False)
    cds_issuers_file: Path | None = None
    # Only for a local evaluation box: answer hooks without a CDS client JWT. Never in production.
    cds_require_jwt: bool = True
    cds_jwt_leeway_s: float = 30.0
    cds_jwt_max_age_s: float = 300.0
    # An unknown kid re-fetches the issuer's jku at most this often (rotation vs. made-up key ids).
    cds_jwks_min_refetch_s: float = 10.0
    cds_prefetch_timeout_s: float = 2.0
    cors_origins: list[str] = Field(default_factory=list)
    # Compliance review (/review): the hospital IdP (OIDC, code + PKCE) and/or local accounts.
    review_oidc_issuer: str | None = None
    review_oidc_client_id: str | None = None
    review_oidc_client_secret: SecretStr | None = None
    review_roles_claim: str = "roles"
    review_local_users_file: Path | None = None
    review_secure_cookies: bool = True
    review_model_card_file: Path | None = None
    # AES-GCM key (base64url, 32 bytes) sealing PKCE verifiers of pending review sign-ins; replicas must
    # share it. Unset: a key file made on first use as $VERITRACE_HOME/keys/review-login.key (0600).
    review_login_key: SecretStr | None = Field(default=None, repr=False)
    # The SMART draft viewer (/viewer) is mounted when the EHR registered it as a client.
    viewer_client_id: str | None = None
    viewer_client_secret: SecretStr = SecretStr("")
    viewer_allowed_issuers: list[str] = Field(default_factory=list)
    viewer_frame_ancestors: list[str] = Field(default_factory=list)
    # AES-GCM key (base64url, 32 bytes) sealing EHR tokens in the database; replicas must share it.
    # Unset: a key file made on first use under VERITRACE_HOME/keys (0600).
    viewer_session_key: SecretStr | None = Field(default=None, repr=False)
    ledger_origin: str = "veritrace.local/ledger"
    ledger_anchor_url: str | None = None
    # Retention in days, unset = keep forever: spool files of finished studies, stored decision traces.
    # The audit ledger is never pruned. The dicom process purges every retention_interval_s.
    retention_spool_days: int | None = Field(default=None, ge=1)
    retention_trace_days: int | None = Field(default=None, ge=1)
    retention_interval_s: float = Field(default=6 * 3600.0, gt=0)

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'veritrace.db'}"

    @property
    def resolved_broker_url(self) -> str:
        # kombu's SQLAlchemy transport: a durable embedded broker with no server to run.
        return self.broker_url or f"sqla+sqlite:///{self.resolved_home / 'broker.db'}"

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path or self.resolved_home / "models" / "tiny-qwen2_5_vl"

    @property
    def resolved_public_base_url(self) -> str:
        return self.public_base_url or f"http://{self.api_host}:{self.api_port}"

    def task_time_limits(self) -> TaskTimeLimits:
        return TaskTimeLimits(
            analysis_s=self.analysis_time_limit_s,
            writeback_s=self.writeback_time_limit_s,
            kill_grace_s=self.task_kill_grace_s,
        )

    def store_config(self) -> StoreConfig:
        return StoreConfig(database_url=self.resolved_database_url)

    def retention_config(self) -> RetentionConfig:
        return RetentionConfig(
            spool_days=self.retention_spool_days,
            trace_days=self.retention_trace_days,
            interval_s=self.retention_interval_s,
        )

    def dicom_config(self) -> DicomConfig:
        return DicomConfig(
            ae_title=self.dicom_ae_title,
            host=self.dicom_host,
            port=self.dicom_port,
            spool_dir=self.spool_dir or self.resolved_home / "spool",
            stable_age_s=self.stable_age,
            allowed_calling_aets=self.dicom_allowed_calling_aets,
            allowed_calling_hosts=self.dicom_allowed_calling_hosts,
            max_associations=self.dicom_max_associations,
            min_free_bytes=self.dicom_min_free_bytes,
            stable_age_by_calling_aet=self.dicom_stable_age_by_calling_aet,
            routing=(
                RoutingRules(modalities=self.dicom_routing_modalities)
                if self.dicom_routing_modalities is not None
                else RoutingRules()
            ),
            tls_cert_file=self.dicom_tls_cert_file,
            tls_key_file=self.dicom_tls_key_file,
            tls_ca_file=self.dicom_tls_ca_file,
            fsync=self.dicom_fsync,
            network_timeout_s=self.dicom_network_timeout_s,
            intake_queue_capacity=self.dicom_intake_queue_capacity,
            intake_batch_max=self.dicom_intake_batch_max,
            sr_destination=self._sr_destination(),
            spool_key_file=self.spool_key_file,
        )

    def _sr_destination(self) -> SrDestination | None:
        if not (self.sr_destination_ae and self.sr_destination_host and self.sr_destination_port):
            return None
        return SrDestination(
            ae_title=self.sr_destination_ae, host=self.sr_destination_host, port=self.sr_destination_port
        )

    def fhir_config(self) -> FhirConfig:
        smart = None
        if self.fhir_smart_token_url and self.fhir_smart_client_id and self.fhir_smart_private_key_file:
            smart = SmartBackendConfig(
                token_url=self.fhir_smart_token_url,
                client_id=self.fhir_smart_client_id,
                private_key_path=self.fhir_smart_private_key_file,
                key_id=self.fhir_smart_key_id or self.fhir_smart_client_id,
                algorithm=self.fhir_smart_algorithm,
                scope=self.fhir_smart_scope,
            )
        return FhirConfig(base_url=self.fhir_base_url, timeout_s=self.fhir_timeout_s, smart=smart)

    def model_settings(self) -> ModelConfig:
        fields: dict[str, object] = {"path": self.resolved_model_path, "cpu_threads": self.model_cpu_threads}
        if self.model_max_new_tokens is not None:  # unset keeps ModelConfig's default
            fields["max_new_tokens"] = self.model_max_new_tokens
        return ModelConfig.model_validate(fields)

    def ledger_config(self) -> LedgerConfig:
        home = self.resolved_home
        return LedgerConfig(
            origin=self.ledger_origin,
            key_dir=home / "keys",
            anchor_dir=home / "anchor",
            anchor_url=self.ledger_anchor_url,
        )

    @property
    def resolved_review_users_file(self) -> Path:
        return self.review_local_users_file or self.resolved_home / "review-users.json"

    def review_config(self) -> ReviewConfig | None:
        """None when no sign-in method is configured: the review app is then not mounted at all."""
        oidc = None
        if self.review_oidc_issuer and self.review_oidc_client_id:
            secret = self.review_oidc_client_secret
            oidc = OidcConfig(
                issuer=self.review_oidc_issuer,
                client_id=self.review_oidc_client_id,
                client_secret=secret.get_secret_value() if secret else None,
                redirect_uri=f"{self.resolved_public_base_url.rstrip('/')}/review/auth/callback",
                roles_claim=self.review_roles_claim,
            )
        users = self.resolved_review_users_file
        local = users if users.exists() else None
        if oidc is None and local is None:
            return None
        return ReviewConfig(
            oidc=oidc,
            local_users_file=local,
            secure_cookies=self.review_secure_cookies,
            model_card_file=self.review_model_card_file,
            login_key=self.review_login_key,
        )

    def ensure_home(self) -> None:
        """Create the var/ tree with owner-only permissions: it holds PHI (spool) and signing keys."""
        for path in (self.resolved_home, self.dicom_config().spool_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

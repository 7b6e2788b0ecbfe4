"""The CDS Hooks 2.0 service: ``create_app`` builds the FastAPI app the API process serves.

Routes: discovery ``GET /cds-services``, ``POST /cds-services/{id}``, ``POST
/cds-services/{id}/feedback``, ``GET /healthz``, and the audit review API. Every error is an
OperationOutcome with the status the spec implies (400 / 401 / 403 / 404 / 412); an unexpected failure
is a 500 OperationOutcome without internals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit import Ledger
from audit.api import build_audit_router
from cds.bearer_tokens import require_bearer_token
from cds.client_auth.jti_replay import JtiReplayCache
from cds.client_auth.jwks_cache import JwksCache
from cds.client_auth.trusted_issuers import TrustedIssuers
from cds.client_auth.verify import ClientTokenVerifier
from cds.observability.tracing import FASTAPI_NATIVE_TELEMETRY_OFF
from cds.operation_outcome import CdsError, IssueCode, operation_outcome
from cds.prefetch import PrefetchFetcher
from cds.routes import discovery, feedback, health, services
from cds.runtime import CdsRuntime
from cds.service_catalog import RegisteredService, default_services
from cds.settings import Settings

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


def build_verifier(
    settings: Settings, session_factory: sessionmaker[Session], http: httpx.AsyncClient
) -> ClientTokenVerifier | None:
    """None only when ``VERITRACE_CDS_REQUIRE_JWT=false`` was set explicitly."""
    if not settings.cds_require_jwt:
        log.warning(
            "CDS client JWT verification is OFF (VERITRACE_CDS_REQUIRE_JWT=false): embedded demo only"
        )
        return None
    issuers_file: Path | None = settings.cds_issuers_file
    if issuers_file is None:
        log.warning("no VERITRACE_CDS_ISSUERS_FILE: every CDS client will be refused (403)")
        issuers = TrustedIssuers({})
    else:
        issuers = TrustedIssuers.load(issuers_file)
    return ClientTokenVerifier(
        issuers,
        JwksCache(http, min_refetch_s=settings.cds_jwks_min_refetch_s),
        JtiReplayCache(session_factory),
        leeway_s=settings.cds_jwt_leeway_s,
        max_age_s=settings.cds_jwt_max_age_s,
    )


def _error(
    status: int, code: IssueCode, diagnostics: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(operation_outcome(code, diagnostics), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CdsError)
    async def cds_error(_request: Request, exc: CdsError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.diagnostics, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        locations = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return _error(400, "invalid", "invalid request: " + ", ".join(locations[:5]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code: IssueCode = (
            "not-found"
            if exc.status_code == 404
            else "not-supported"
            if exc.status_code == 405
            else "processing"
        )
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected CDS error: %s", type(exc).__name__)
        return _error(500, "exception", "internal error")


def create_app(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session],
    ledger: Ledger,
    services_catalog: dict[str, RegisteredService] | None = None,
) -> FastAPI:
    """The CDS Hooks API. ``services_catalog`` defaults to every Veritrace service."""
    http = httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=100))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # Flush the hook writes still batched, then let go of outbound connections.
        await anyio.to_thread.run_sync(_app.state.cds.commits.close)
        await http.aclose()

    app = FastAPI(
        title="Veritrace CDS Hooks",
        version="2.0",
        lifespan=lifespan,
        telemetry=FASTAPI_NATIVE_TELEMETRY_OFF,  # our TracingMiddleware makes the one PHI-free span
    )
    app.state.cds = CdsRuntime(
        public_base_url=settings.resolved_public_base_url.rstrip("/"),
        session_factory=session_factory,
        ledger=ledger,
        verifier=build_verifier(settings, session_factory, http),
        fetcher=PrefetchFetcher(http, timeout_s=settings.cds_prefetch_timeout_s),
        services=services_catalog if services_catalog is not None else default_services(),
        http=http,
        smart_viewer=bool(settings.viewer_client_id),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    _install_error_handlers(app)
    for router in (discovery.router, services.router, feedback.router, health.router):
        app.include_router(router)
    auditor = Depends(require_bearer_token(settings.audit_api_tokens, "read audit entries"))
    app.include_router(build_audit_router(lambda: ledger, entry_dependencies=[auditor]))
    if settings.stow_tokens:
        _mount_stow(app, settings, session_factory, ledger)
    if settings.viewer_client_id:
        _mount_viewer(app, settings, session_factory, ledger, http)
    review_config = settings.review_config()
    if review_config is not None:
        from audit.review import build_review_router
        from integrations.dicom.spool import open_spool
        from integrations.store.review_source import SqlTraceSource

        source = SqlTraceSource(session_factory, open_spool(settings.dicom_config(), audit=ledger))
        app.include_router(build_review_router(source, ledger, review_config))
    return app


def _mount_viewer(
    app: FastAPI,
    settings: Settings,
    session_factory: sessionmaker[Session],
    ledger: Ledger,
    http: httpx.AsyncClient,
) -> None:
    from cds.viewer import LaunchStore, ViewerConfig, build_viewer_router
    from cds.viewer.sealed_secrets import SecretSealer
    from integrations.dicom.spool import open_spool

    assert settings.viewer_client_id is not None
    key = settings.viewer_session_key
    sealer = SecretSealer.from_key_or_file(
        key.get_secret_value() if key else None, settings.resolved_home / "keys" / "viewer-session.key"
    )
    config = ViewerConfig(
        public_base_url=settings.resolved_public_base_url,
        client_id=settings.viewer_client_id,
        client_secret=settings.viewer_client_secret,
        allowed_issuers=tuple(settings.viewer_allowed_issuers),
        frame_ancestors=tuple(settings.viewer_frame_ancestors),
    )
    app.include_router(
        build_viewer_router(
            config,
            session_factory=session_factory,
            ledger=ledger,
            spool=open_spool(settings.dicom_config(), audit=ledger),
            launch_store=LaunchStore(session_factory, sealer, launch_ttl_s=config.launch_ttl_s),
            http=http,
        )
    )


def _mount_stow(
    app: FastAPI, settings: Settings, session_factory: sessionmaker[Session], ledger: Ledger
) -> None:
    """STOW-RS lands in the same spool and index as the SCP; off unless a PACS has a token."""
    from integrations.dicom.spool import open_spool
    from integrations.dicomweb.stow import make_stow_router

    spool = open_spool(settings.dicom_config(), audit=ledger)
    app.include_router(
        make_stow_router(
            spool=spool,
            session_factory=session_factory,
            ledger=ledger,
            dependencies=[Depends(require_bearer_token(settings.stow_tokens, "store studies"))],
        )
    )

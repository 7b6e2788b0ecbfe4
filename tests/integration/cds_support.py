"""Shared pieces of the CDS Hooks tests: a real store + ledger, seeded reports, a real JWKS server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger, LedgerConfig
from cds.app import create_app
from cds.client_auth.ehr_signer import EhrTokenSigner
from cds.settings import Settings
from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.migrate import upgrade_database
from integrations.store.models import Analysis, Report, Study

PUBLIC_BASE = "http://testserver"
ISSUER = "https://ehr.test.example/"


class JwtOffSettings(Settings):
    """Settings with the explicit switch the embedded demo uses (VERITRACE_CDS_REQUIRE_JWT=false)."""

    cds_require_jwt: bool = False


@dataclass
class Store:
    engine: Engine
    session_factory: sessionmaker[Session]
    ledger: Ledger


def make_store(tmp_path: Path, database_url: str | None = None) -> Store:
    engine = make_engine(StoreConfig(database_url=database_url or f"sqlite:///{tmp_path / 'vt.db'}"))
    upgrade_database(engine)
    ledger = Ledger(engine, LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=None))
    return Store(engine, make_session_factory(engine), ledger)


def settings_for(tmp_path: Path, *, issuers: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    issuers_file = None
    if issuers is not None:
        issuers_file = tmp_path / "issuers.json"
        issuers_file.write_text(json.dumps(issuers))
    return Settings(home=tmp_path, public_base_url=PUBLIC_BASE, cds_issuers_file=issuers_file, **overrides)


def build_app(tmp_path: Path, store: Store, signer: EhrTokenSigner | None, **overrides: Any) -> FastAPI:
    """The real app; ``signer``'s public key trusted inline, or JWT switched off when None."""
    if signer is None:
        settings: Settings = JwtOffSettings(home=tmp_path, public_base_url=PUBLIC_BASE, **overrides)
    else:
        settings = settings_for(tmp_path, issuers={signer.iss: {"jwks": signer.jwks()}}, **overrides)
    return create_app(settings, session_factory=store.session_factory, ledger=store.ledger)


def seed_report(
    store: Store,
    *,
    patient_id: str,
    study_uid: str | None = None,
    severity: str = "moderate",
    summary: str = "Right lower lobe nodule 8 mm",
    findings: list[dict[str, Any]] | None = None,
    signals: list[dict[str, Any]] | None = None,
    status: str = "draft",
    untrained: bool = False,
    fhir_report_id: str | None = None,
) -> Report:
    study_uid = study_uid or f"1.2.826.0.1.{uuid.uuid4().int % 10**12}"
    body: dict[str, Any] = {
        "findings": findings
        if findings is not None
        else [
            {
                "text": "8 mm nodule in the right lower lobe; follow-up CT recommended",
                "severity": severity,
                "citations": ["img:1.2.3:0"],
            },
        ],
        "impression": [{"text": "Indeterminate pulmonary nodule", "severity": severity, "citations": []}],
        "untrained_model": untrained,
    }
    if signals is not None:
        body["signals"] = signals
    with store.session_factory() as session:
        study = Study(study_uid=study_uid, patient_id=patient_id, modality="CT", state="stable")
        session.add(study)
        session.flush()
        analysis = Analysis(study_id=study.id, content_digest=uuid.uuid4().hex, status="completed")
        session.add(analysis)
        session.flush()
        report = Report(
            analysis_id=analysis.id,
            patient_id=patient_id,
            study_uid=study_uid,
            status=status,
            severity=severity,
            summary=summary,
            body=body,
            markdown="# draft",
            untrained_model=untrained,
            fhir_report_id=fhir_report_id,
        )
        session.add(report)
        session.commit()
        return report


class JwksServer:
    """A real HTTP server on localhost publishing a mutable JWK Set (for jku and key rotation)."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(aud: str, jti: str) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": aud, "iat": now, "exp": now + 300, "jti": jti}


def alg_none_token(signer: EhrTokenSigner, aud: str, jti: str = "n1") -> str:
    """An unsigned token (``alg: none``) naming ``signer``'s key: the verifier must refuse it."""
    header = {"alg": "none", "typ": "JWT", "kid": signer.kid}
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(_claims(aud, jti)).encode())}."


def hs256_public_key_token(signer: EhrTokenSigner, aud: str, jti: str = "h1") -> str:
    """HS256 with ``signer``'s public key (PEM) as the HMAC secret, the classic algorithm confusion."""
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    payload = _b64url(json.dumps(_claims(aud, jti)).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(mac)}"


def hook_body(
    hook: str, context: dict[str, Any], prefetch: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, **extra}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }

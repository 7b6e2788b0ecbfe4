"""Server-side state of launches in progress and of open viewer sessions, in the shared database.

Nothing secret reaches the browser except an opaque session handle: the PKCE verifier and the state
wait here for the callback, and the access token stays here for the session's FHIR reads. The handle
travels in a request header (``X-Viewer-Session``) set by the page's script, never in a cookie (the
viewer runs in an EHR iframe, where third-party cookies are blocked) and never in a URL.

The rows live in the store's database (``viewer_launches``, ``viewer_sessions``), so any API replica
behind a load balancer can take a callback or serve a page for a launch another replica started. Only
SHA-256 digests of ``state`` and handles are stored, the verifier and the token are sealed with
AES-GCM, and expiry is checked by every read. A launch is consumed by a single ``DELETE … RETURNING``:
of two callbacks with the same ``state``, on whatever replicas, one gets it and the other nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from cds.viewer.sealed_secrets import SecretSealer
from integrations.store.models import ViewerLaunchRecord, ViewerSessionRecord


@dataclass(frozen=True)
class PendingLaunch:
    """What a launch left for its callback; ``code_verifier`` None means it was lost (refused)."""

    state: str
    iss: str
    launch: str | None
    report_id: str | None
    code_verifier: str | None
    authorization_endpoint: str
    token_endpoint: str
    auth_server_issuer: str | None
    jwks_uri: str | None = None


@dataclass(frozen=True)
class ViewerSession:
    """An authorised clinician session: the EHR's token and the context it was granted for."""

    handle: str
    iss: str
    access_token: str
    patient_id: str
    encounter_id: str | None
    user: str | None
    scopes: tuple[str, ...]
    report_id: str
    card_uuid: str | None
    expires_at: datetime


def digest(value: str) -> str:
    """The key a ``state`` or handle is stored under: hex SHA-256, so the table never holds the value."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class LaunchStore:
    """Pending launches (single use, ``launch_ttl_s``) and sessions (until their ``expires_at``).

    Blocking database calls: call from a worker thread in async code.
    """

    def __init__(
        self, session_factory: sessionmaker[Session], sealer: SecretSealer, *, launch_ttl_s: float
    ) -> None:
        self._sessions = session_factory
        self._sealer = sealer
        self._launch_ttl = timedelta(seconds=launch_ttl_s)

    def put_pending(self, pending: PendingLaunch) -> None:
        key = digest(pending.state)
        now = _now()
        verifier = pending.code_verifier
        record = ViewerLaunchRecord(
            state_sha256=key,
            iss=pending.iss,
            launch=pending.launch,
            report_id=pending.report_id,
            sealed_code_verifier=self._sealer.seal(verifier, bound_to=key) if verifier else None,
            authorization_endpoint=pending.authorization_endpoint,
            token_endpoint=pending.token_endpoint,
            auth_server_issuer=pending.auth_server_issuer,
            jwks_uri=pending.jwks_uri,
            expires_at=now + self._launch_ttl,
        )
        with self._sessions.begin() as db:
            db.execute(delete(ViewerLaunchRecord).where(ViewerLaunchRecord.expires_at <= now))
            db.add(record)

    def take_pending(self, state: str) -> PendingLaunch | None:
        """The unexpired launch for ``state``, deleted in the same statement, so a replay finds nothing."""
        key = digest(state)
        launch = ViewerLaunchRecord
        with self._sessions.begin() as db:
            row = db.execute(
                delete(launch)
                .where(launch.state_sha256 == key, launch.expires_at > _now())
                .returning(
                    launch.iss,
                    launch.launch,
                    launch.report_id,
                    launch.sealed_code_verifier,
                    launch.authorization_endpoint,
                    launch.token_endpoint,
                    launch.auth_server_issuer,
                    launch.jwks_uri,
                )
            ).first()
        if row is None:
            return None
        sealed = row.sealed_code_verifier
        return PendingLaunch(
            state=state,
            iss=row.iss,
            launch=row.launch,
            report_id=row.report_id,
            # A verifier that does not open (other key, altered row) counts as lost: the callback refuses.
            code_verifier=self._sealer.open(sealed, bound_to=key) if sealed else None,
            authorization_endpoint=row.authorization_endpoint,
            token_endpoint=row.token_endpoint,
            auth_server_issuer=row.auth_server_issuer,
            jwks_uri=row.jwks_uri,
        )

    def new_handle(self) -> str:
        return secrets.token_urlsafe(32)

    def put_session(self, session: ViewerSession) -> None:
        key = digest(session.handle)
        now = _now()
        record = ViewerSessionRecord(
            handle_sha256=key,
            iss=session.iss,
            sealed_access_token=self._sealer.seal(session.access_token, bound_to=key),
            patient_id=session.patient_id,
            encounter_id=session.encounter_id,
            fhir_user=session.user,
            scopes=" ".join(session.scopes),
            report_id=session.report_id,
            card_uuid=session.card_uuid,
            expires_at=session.expires_at,
        )
        with self._sessions.begin() as db:
            db.execute(delete(ViewerSessionRecord).where(ViewerSessionRecord.expires_at <= now))
            db.add(record)

    def get_session(self, handle: str) -> ViewerSession | None:
        """The unexpired session for ``handle``; None for an unknown, expired or unreadable one."""
        key = digest(handle)
        with self._sessions() as db:
            record = db.scalar(
                select(ViewerSessionRecord).where(
                    ViewerSessionRecord.handle_sha256 == key, ViewerSessionRecord.expires_at > _now()
                )
            )
        if record is None:
            return None
        token = self._sealer.open(record.sealed_access_token, bound_to=key)
        if token is None:
            return None
        return ViewerSession(
            handle=handle,
            iss=record.iss,
            access_token=token,
            patient_id=record.patient_id,
            encounter_id=record.encounter_id,
            user=record.fhir_user,
            scopes=tuple(record.scopes.split()),
            report_id=record.report_id,
            card_uuid=record.card_uuid,
            expires_at=record.expires_at,
        )

"""The viewer's launch state in the database: digests only, sealed secrets, expiry, single use.

Runs on SQLite and PostgreSQL (the ``database_url`` fixture); the key file tests on a real file system.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from cds.viewer.launch_state import LaunchStore, PendingLaunch, ViewerSession
from cds.viewer.sealed_secrets import SecretSealer, decode_key, load_or_create_key_file
from integrations.store.models import ViewerLaunchRecord, ViewerSessionRecord
from tests.integration.cds_support import Store, make_store

pytestmark = pytest.mark.postgres
ACCESS_TOKEN = "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl"


@pytest.fixture
def store(tmp_path: Path, database_url: str) -> Store:
    return make_store(tmp_path, database_url)


@pytest.fixture
def sealer() -> SecretSealer:
    return SecretSealer(os.urandom(32))


def _pending(state: str) -> PendingLaunch:
    return PendingLaunch(
        state=state,
        iss="https://ehr.example/fhir",
        launch="launch-1",
        report_id="r-1",
        code_verifier=secrets.token_urlsafe(32),
        authorization_endpoint="https://ehr.example/auth",
        token_endpoint="https://ehr.example/token",
        auth_server_issuer="https://ehr.example",
        jwks_uri="https://ehr.example/jwks",
    )


def _session(handle: str, *, expires_in_s: float) -> ViewerSession:
    return ViewerSession(
        handle=handle,
        iss="https://ehr.example/fhir",
        access_token=ACCESS_TOKEN,
        patient_id="p-1",
        encounter_id="e-1",
        user="https://ehr.example/fhir/Practitioner/dr-1",
        scopes=("launch", "patient/Observation.rs"),
        report_id="r-1",
        card_uuid=None,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
    )


def test_a_launch_is_taken_once_and_only_its_digest_is_stored(store: Store, sealer: SecretSealer) -> None:
    launches = LaunchStore(store.session_factory, sealer, launch_ttl_s=600)
    pending = _pending(secrets.token_urlsafe(32))
    launches.put_pending(pending)
    with store.session_factory() as db:
        row = db.scalars(select(ViewerLaunchRecord)).one()
    assert row.state_sha256 == hashlib.sha256(pending.state.encode()).hexdigest()
    assert row.sealed_code_verifier and pending.code_verifier
    assert pending.code_verifier.encode() not in row.sealed_code_verifier
    assert launches.take_pending("another state") is None
    assert launches.take_pending(pending.state) == pending
    assert launches.take_pending(pending.state) is None


def test_concurrent_callbacks_with_one_state_get_it_once(store: Store, sealer: SecretSealer) -> None:
    """Two stores (two replicas) racing for the same state: exactly one wins, on either database."""
    replicas = [LaunchStore(store.session_factory, sealer, launch_ttl_s=600) for _ in range(2)]
    states = [secrets.token_urlsafe(32) for _ in range(20)]
    for state in states:
        replicas[0].put_pending(_pending(state))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda job: replicas[job % 2].take_pending(states[job // 2]), range(2 * len(states)))
        )
    taken = [r for r in results if r is not None]
    assert sorted(r.state for r in taken) == sorted(states)


def test_an_expired_launch_is_refused(store: Store, sealer: SecretSealer) -> None:
    launches = LaunchStore(store.session_factory, sealer, launch_ttl_s=600)
    pending = _pending(secrets.token_urlsafe(32))
    launches.put_pending(pending)
    with store.session_factory.begin() as db:
        db.execute(update(ViewerLaunchRecord).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert launches.take_pending(pending.state) is None
    launches.put_pending(_pending(secrets.token_urlsafe(32)))  # a write purges what has expired
    with store.session_factory() as db:
        assert db.scalar(select(func.count()).select_from(ViewerLaunchRecord)) == 1


def test_sessions_store_a_digest_and_a_sealed_token_and_expire(store: Store, sealer: SecretSealer) -> None:
    launches = LaunchStore(store.session_factory, sealer, launch_ttl_s=600)
    live, stale = launches.new_handle(), launches.new_handle()
    launches.put_session(_session(stale, expires_in_s=-1))
    launches.put_session(_session(live, expires_in_s=3600))
    with store.session_factory() as db:
        rows = db.scalars(select(ViewerSessionRecord)).all()
    # The expired session was purged when the live one was written.
    assert [r.handle_sha256 for r in rows] == [hashlib.sha256(live.encode()).hexdigest()]
    assert ACCESS_TOKEN.encode() not in rows[0].sealed_access_token
    assert b"eyJ" not in rows[0].sealed_access_token
    found = launches.get_session(live)
    assert found is not None and found.access_token == ACCESS_TOKEN
    assert found.scopes == ("launch", "patient/Observation.rs") and found.patient_id == "p-1"
    assert launches.get_session(stale) is None and launches.get_session("forged") is None
    with store.session_factory.begin() as db:
        db.execute(update(ViewerSessionRecord).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert launches.get_session(live) is None


def test_another_key_or_a_moved_row_opens_nothing(store: Store, sealer: SecretSealer) -> None:
    launches = LaunchStore(store.session_factory, sealer, launch_ttl_s=600)
    first, second = launches.new_handle(), launches.new_handle()
    launches.put_session(_session(first, expires_in_s=3600))
    launches.put_session(_session(second, expires_in_s=3600))
    other_key = LaunchStore(store.session_factory, SecretSealer(os.urandom(32)), launch_ttl_s=600)
    assert other_key.get_session(first) is None
    digest_first = hashlib.sha256(first.encode()).hexdigest()
    digest_second = hashlib.sha256(second.encode()).hexdigest()
    with store.session_factory.begin() as db:
        sealed = db.get_one(ViewerSessionRecord, digest_first).sealed_access_token
        db.get_one(ViewerSessionRecord, digest_second).sealed_access_token = sealed
    assert launches.get_session(second) is None  # the token is bound to its own row
    assert launches.get_session(first) is not None


def test_key_file_is_made_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "viewer-session.key"
    key = load_or_create_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key_file(path) == key
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_key_file(path)


def test_key_from_settings_must_be_32_bytes_of_base64url() -> None:
    key = os.urandom(32)
    assert decode_key(base64.urlsafe_b64encode(key).decode().rstrip("=")) == key
    with pytest.raises(ValueError, match="32 bytes"):
        decode_key(base64.urlsafe_b64encode(os.urandom(16)).decode())
    with pytest.raises(ValueError, match="base64url"):
        decode_key("not base64 at all!")

"""Review app sessions on two API replicas sharing one PostgreSQL database (no sticky sessions).

Each replica has its own engine and ledger over the same database: a reviewer signed in on one is
signed in on the other, a search saved on one opens on the other, signing out on one ends the session
everywhere, and a pending OIDC sign-in is taken once whichever replica the callback reaches, its sealed
verifier opening there only with the shared login key.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from audit import Ledger, LedgerConfig
from audit.review import ReviewConfig
from audit.review.login_sealing import LoginSealer, decode_login_key, new_login_key
from audit.review.reviewer import Reviewer
from audit.review.session_tables import review_logins, review_searches, review_sessions
from audit.review.sessions import PendingLogin, PendingLoginUnreadable, SessionStore
from audit.review.source import AnalysisFilters
from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine, make_session_factory
from tests.integration.review_seed import PASSWORD, SeededStore, review_app, seed, write_local_users

pytestmark = pytest.mark.postgres
COOKIE = "vt_review_session"


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[SeededStore, TestClient, TestClient]]:
    store_a = seed(tmp_path, postgres_url)
    engine_b = make_engine(StoreConfig(database_url=postgres_url))
    ledger_b = Ledger(engine_b, LedgerConfig(key_dir=tmp_path / "b-keys", anchor_dir=None))
    store_b = SeededStore(make_session_factory(engine_b), ledger_b, store_a.spool_dir)
    config = ReviewConfig(local_users_file=write_local_users(tmp_path), secure_cookies=False)
    yield store_a, TestClient(review_app(store_a, config)), TestClient(review_app(store_b, config))
    engine_b.dispose()


def _sign_in(replica: TestClient) -> str:
    page = replica.get("/review/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    response = replica.post(
        "/review/login/local",
        data={"username": "officer", "password": PASSWORD, "csrf_token": token.group(1), "next": ""},
        follow_redirects=False,
    )
    assert response.status_code == 303
    return str(response.cookies[COOKIE])


def _csrf(replica: TestClient) -> str:
    found = re.search(r'data-csrf="([^"]+)"', replica.get("/review/analyses").text)
    assert found is not None
    return found.group(1)


def test_a_session_from_one_replica_works_on_the_other(
    replicas: tuple[SeededStore, TestClient, TestClient],
) -> None:
    store, replica_a, replica_b = replicas
    session_id = _sign_in(replica_a)  # replica A's client keeps the cookie; the browser brings it to B
    replica_b.cookies.set(COOKIE, session_id)
    assert replica_b.get("/review/api/me").json()["subject"] == "officer"

    saved = replica_a.post(
        "/review/search",
        data={"csrf_token": _csrf(replica_a), "target": "analyses", "patient_id": "pat-1001"},
        follow_redirects=False,
    )
    assert saved.status_code == 303 and "pat-1001" not in saved.headers["location"]
    page = replica_b.get(saved.headers["location"])
    assert "1 analysis found" in page.text and "pat-1001" in page.text

    with store.ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(review_sessions)).all()
    assert [r.id_sha256 for r in rows] == [hashlib.sha256(session_id.encode()).hexdigest()]
    assert all(session_id not in str(value) for value in rows[0])

    out = replica_b.post("/review/logout", data={"csrf_token": _csrf(replica_b)}, follow_redirects=False)
    assert out.status_code == 303
    assert replica_a.get("/review/api/me").status_code == 401
    with store.ledger.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(review_searches)) == 0


def test_a_pending_sign_in_is_taken_once_on_any_replica(
    replicas: tuple[SeededStore, TestClient, TestClient],
) -> None:
    store, _, _ = replicas
    engine = store.ledger.engine
    shared_key = decode_login_key(new_login_key())
    one = SessionStore(engine, 3600, LoginSealer(shared_key))
    two = SessionStore(engine, 3600, LoginSealer(shared_key))
    pending = PendingLogin("v" * 64, "nonce", "/review/analyses", time.time() + 600)
    state = one.begin_login(pending)
    with engine.connect() as conn:
        (stored,) = conn.execute(sa.select(review_logins.c.code_verifier_sealed)).scalars().all()
    assert "v" * 16 not in stored
    assert two.finish_login(state) == pending
    assert one.finish_login(state) is None and two.finish_login(state) is None
    late = one.begin_login(pending)
    with engine.begin() as conn:
        conn.execute(sa.update(review_logins).values(expires_at=time.time() - 1))
    assert two.finish_login(late) is None
    # A replica configured with another key cannot open what the first one sealed: refused, and gone.
    stranger = SessionStore(engine, 3600, LoginSealer(decode_login_key(new_login_key())))
    elsewhere = one.begin_login(pending)
    with pytest.raises(PendingLoginUnreadable):
        stranger.finish_login(elsewhere)
    assert one.finish_login(elsewhere) is None


def test_expired_sessions_are_refused_and_purged_with_their_searches(
    replicas: tuple[SeededStore, TestClient, TestClient],
) -> None:
    store, _, _ = replicas
    sessions = SessionStore(store.ledger.engine, 3600)
    reviewer = Reviewer(subject="s-1", name="S", roles=frozenset(), via="local")
    old = sessions.create(reviewer)
    sessions.save_search(old, AnalysisFilters(patient_id="pat-1001"))
    with store.ledger.engine.begin() as conn:
        conn.execute(sa.update(review_sessions).values(expires_at=time.time() - 1))
    assert sessions.get(old.id) is None
    fresh = sessions.create(reviewer)
    found = sessions.get(fresh.id)
    assert found is not None and found.searches == {}
    with store.ledger.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(review_sessions)) == 1
        assert conn.scalar(sa.select(sa.func.count()).select_from(review_searches)) == 0

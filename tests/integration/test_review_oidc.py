"""Sign-in to the review app through a real OpenID provider (oidc-provider on Node.js, deploy/oidc):
authorization code + PKCE, roles from the claim, state bound to the browser and usable once, and the
PKCE verifier kept sealed in the database while the sign-in is pending."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from audit.review import OidcConfig, ReviewConfig
from audit.review.login_sealing import LOGIN_KEY_FILE, LoginSealer, new_login_key, row_digest
from audit.review.oidc_client import code_challenge
from audit.review.session_tables import review_logins
from tests.conftest import free_port
from tests.integration.review_idp import CLIENT_ID, CLIENT_SECRET, RunningIdp, running_idp
from tests.integration.review_seed import SeededStore, review_app, seed

APP_BASE = "http://testserver"


@pytest.fixture(scope="module")
def idp() -> Iterator[RunningIdp]:
    with running_idp(free_port(), APP_BASE + "/review/auth/callback") as running:
        yield running


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SeededStore:
    return seed(tmp_path_factory.mktemp("review-oidc"))


def oidc_config(idp: RunningIdp, secret: str = CLIENT_SECRET, login_key: str | None = None) -> ReviewConfig:
    return ReviewConfig(
        oidc=OidcConfig(
            issuer=idp.issuer, client_id=CLIENT_ID, client_secret=secret, redirect_uri=idp.redirect_uri
        ),
        secure_cookies=False,
        login_key=SecretStr(login_key) if login_key else None,
    )


def authorize_at_idp(authorization_url: str, login: str) -> str:
    """Drive the IdP's own sign-in form like a browser; returns the redirect back to the app."""
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        response = browser.get(authorization_url)
        while response.status_code in (302, 303) and not response.headers["location"].startswith(APP_BASE):
            response = browser.get(httpx.URL(str(response.url)).join(response.headers["location"]))
        action = re.search(r'action="([^"]+)"', response.text)
        assert action is not None, response.text[:500]
        response = browser.post(
            httpx.URL(str(response.url)).join(action.group(1)),
            data={"prompt": "login", "login": login, "password": "any"},
        )
        while not response.headers["location"].startswith(APP_BASE):
            response = browser.get(httpx.URL(str(response.url)).join(response.headers["location"]))
        return str(response.headers["location"])


def start_sign_in(client: TestClient) -> str:
    response = client.get("/review/login/oidc?next=/review/dashboards", follow_redirects=False)
    assert response.status_code == 303
    return str(response.headers["location"])


def test_code_flow_with_pkce_signs_in_with_roles(idp: RunningIdp, store: SeededStore) -> None:
    client = TestClient(review_app(store, oidc_config(idp)))
    authorization_url = start_sign_in(client)
    query = parse_qs(urlsplit(authorization_url).query)
    assert authorization_url.startswith(idp.issuer + "/auth?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["scope"] == ["openid profile roles"]
    callback = authorize_at_idp(authorization_url, "officer")
    assert "code=" in callback and "iss=" in callback
    response = client.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/review/dashboards"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/review" in cookie
    assert client.get("/review/api/me").json() == {
        "subject": "officer",
        "name": "Casey Compliance",
        "roles": ["compliance-officer"],
        "via": "oidc",
    }
    signed_in = store.ledger.entry(store.ledger.size() - 1)
    assert signed_in.kind == "review.signed_in" and signed_in.actor == "reviewer:oidc:officer"
    # The callback is good once: a replay (say, from browser history) starts no second session.
    again = TestClient(client.app)
    again.cookies.update(client.cookies)
    replay = again.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert replay.headers["location"] == "/review/login?error=expired"


def test_user_without_review_role_is_refused(idp: RunningIdp, store: SeededStore) -> None:
    client = TestClient(review_app(store, oidc_config(idp)))
    callback = authorize_at_idp(start_sign_in(client), "visitor")
    response = client.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=no-role"
    assert client.get("/review/api/me").status_code == 401


def test_callback_from_another_browser_is_refused(idp: RunningIdp, store: SeededStore) -> None:
    app = review_app(store, oidc_config(idp))
    victim, attacker = TestClient(app), TestClient(app)
    callback = authorize_at_idp(start_sign_in(attacker), "admin")
    # Login CSRF: the attacker's callback URL opened in the victim's browser lacks the state cookie.
    response = victim.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=expired"
    assert victim.get("/review/api/me").status_code == 401


def test_wrong_client_secret_fails_at_the_token_endpoint(idp: RunningIdp, store: SeededStore) -> None:
    client = TestClient(review_app(store, oidc_config(idp, secret="not-the-secret")))
    callback = authorize_at_idp(start_sign_in(client), "officer")
    response = client.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=failed"


def test_unreachable_idp_shows_a_clear_error(store: SeededStore, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = ReviewConfig(
        oidc=OidcConfig(issuer=dead, client_id="x", redirect_uri=APP_BASE + "/review/auth/callback"),
        secure_cookies=False,
    )
    client = TestClient(review_app(store, config))
    response = client.get("/review/login/oidc", follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=failed"
    assert "Sign-in failed" in client.get(response.headers["location"]).text


def test_code_challenge_is_rfc7636_s256() -> None:
    # RFC 7636 Appendix B.
    assert (
        code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


# ------------------------------------------------------------------ the pending sign-in's sealed verifier
def _pending_row(store: SeededStore, authorization_url: str) -> sa.Row[tuple[object, ...]]:
    state = parse_qs(urlsplit(authorization_url).query)["state"][0]
    key = hashlib.sha256(state.encode()).hexdigest()
    with store.ledger.engine.connect() as conn:
        row = conn.execute(sa.select(review_logins).where(review_logins.c.state_sha256 == key)).one()
    return row


def _set_sealed(store: SeededStore, state_sha256: str, sealed: str) -> None:
    with store.ledger.engine.begin() as conn:
        conn.execute(
            sa.update(review_logins)
            .where(review_logins.c.state_sha256 == state_sha256)
            .values(code_verifier_sealed=sealed)
        )


def test_the_stored_verifier_is_sealed_and_bound_to_its_row(idp: RunningIdp, store: SeededStore) -> None:
    client = TestClient(review_app(store, oidc_config(idp)))
    authorization_url = start_sign_in(client)
    row = _pending_row(store, authorization_url)
    key_file = store.ledger.config.key_dir / LOGIN_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    sealer = LoginSealer.from_key_or_file(None, key_file)
    bound = row_digest(
        state_sha256=row.state_sha256, nonce=row.nonce, return_to=row.return_to, expires_at=row.expires_at
    )
    verifier = sealer.open(row.code_verifier_sealed, row=bound)
    assert verifier is not None and len(verifier) >= 43
    # It is the verifier behind the challenge the IdP got, yet the column holds none of it.
    challenge = parse_qs(urlsplit(authorization_url).query)["code_challenge"][0]
    assert code_challenge(verifier) == challenge
    assert row.code_verifier_sealed != verifier and verifier[:12] not in row.code_verifier_sealed
    assert verifier[:12] not in base64.urlsafe_b64decode(row.code_verifier_sealed + "==").decode("latin-1")
    # Bound to the row: the same ciphertext under another return path does not open.
    moved = row_digest(
        state_sha256=row.state_sha256,
        nonce=row.nonce,
        return_to="/review/elsewhere",
        expires_at=row.expires_at,
    )
    assert sealer.open(row.code_verifier_sealed, row=moved) is None


REFUSED_UNOPENED = "the pending sign-in was sealed with another login key"


def test_a_tampered_sealed_verifier_refuses_the_callback(
    idp: RunningIdp, store: SeededStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = TestClient(review_app(store, oidc_config(idp)))
    authorization_url = start_sign_in(client)
    row = _pending_row(store, authorization_url)
    sealed = str(row.code_verifier_sealed)
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    _set_sealed(store, row.state_sha256, flipped)
    callback = authorize_at_idp(authorization_url, "officer")
    response = client.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=failed"
    assert REFUSED_UNOPENED in caplog.text, "refused before any code was redeemed at the IdP"
    assert client.get("/review/api/me").status_code == 401
    # Taken by the refused callback: a retry with the same state finds nothing.
    retry = client.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert retry.headers["location"] == "/review/login?error=expired"


def test_a_verifier_sealed_for_another_row_refuses_the_callback(
    idp: RunningIdp, store: SeededStore, caplog: pytest.LogCaptureFixture
) -> None:
    app = review_app(store, oidc_config(idp))
    victim, attacker = TestClient(app), TestClient(app)
    victim_url, attacker_url = start_sign_in(victim), start_sign_in(attacker)
    victim_row, attacker_row = _pending_row(store, victim_url), _pending_row(store, attacker_url)
    # Someone with write access to the table copies one pending sign-in's sealed verifier into another.
    _set_sealed(store, victim_row.state_sha256, str(attacker_row.code_verifier_sealed))
    callback = authorize_at_idp(victim_url, "officer")
    response = victim.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=failed"
    assert REFUSED_UNOPENED in caplog.text
    assert victim.get("/review/api/me").status_code == 401


def test_replicas_sharing_the_configured_login_key_finish_each_others_sign_ins(
    idp: RunningIdp, store: SeededStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_login_key()
    first = TestClient(review_app(store, oidc_config(idp, login_key=key)))
    second = TestClient(review_app(store, oidc_config(idp, login_key=key)))
    other = TestClient(review_app(store, oidc_config(idp, login_key=new_login_key())))
    callback = authorize_at_idp(start_sign_in(first), "officer")
    second.cookies.update(first.cookies)  # the load balancer sends the callback to the other replica
    response = second.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/dashboards"
    assert REFUSED_UNOPENED not in caplog.text
    callback = authorize_at_idp(start_sign_in(first), "officer")
    other.cookies.update(first.cookies)  # a replica with another key: refused, not signed in
    response = other.get(callback.removeprefix(APP_BASE), follow_redirects=False)
    assert response.headers["location"] == "/review/login?error=failed"
    assert REFUSED_UNOPENED in caplog.text

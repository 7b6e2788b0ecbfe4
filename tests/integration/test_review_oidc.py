"""Sign-in to the review app through a real OpenID provider (oidc-provider on Node.js, deploy/oidc):
authorization code + PKCE, roles from the claim, state bound to the browser and usable once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from audit.review import OidcConfig, ReviewConfig
from audit.review.oidc_client import code_challenge
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


def oidc_config(idp: RunningIdp, secret: str = CLIENT_SECRET) -> ReviewConfig:
    return ReviewConfig(
        oidc=OidcConfig(
            issuer=idp.issuer, client_id=CLIENT_ID, client_secret=secret, redirect_uri=idp.redirect_uri
        ),
        secure_cookies=False,
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

"""Every route of the compliance review app, for every role and for an anonymous caller.

The routes are enumerated from the mounted app, not listed by hand: each must have an entry in
`DECISIONS` (public, any signed-in reviewer, or one `Permission`), and a route added without one fails
`test_every_review_route_has_an_authorization_decision`. The expected status follows from the decision
and the role table (`ROLE_PERMISSIONS`): an API call answers 401 without a session and 403 without the
permission; a page sends an anonymous visitor to sign in (303) and shows a 403 page to a reviewer whose
roles do not allow it; a permitted call gets the route's own success status. Real store, real ledger,
sign-in through the local-users form (the seed of `tests/integration/review_seed.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response

from audit.review import ROLE_PERMISSIONS, Permission, ReviewConfig, Role
from tests.integration.review_seed import (
    PASSWORD,
    SeededStore,
    review_app,
    seed,
    sign_in,
    write_local_users,
)

ROLES: list[Role | None] = [None, *Role]  # None: no session


@dataclass(frozen=True)
class Decision:
    """Who may call a route: `gate` says how refusal looks, `ok` what a permitted call gets."""

    gate: Literal["public", "session", "api", "page"]
    permission: Permission | None = None
    ok: int = 200


DECISIONS: dict[tuple[str, str], Decision] = {
    # Sign-in and sign-out: open to anyone by design. Without an IdP configured the OIDC routes are 404;
    # a local sign-in without the login form's CSRF cookie is 403 for everyone.
    ("GET", "/review/login"): Decision("public"),
    ("GET", "/review/login/oidc"): Decision("public", ok=404),
    ("GET", "/review/auth/callback"): Decision("public", ok=404),
    ("POST", "/review/login/local"): Decision("public", ok=403),
    ("POST", "/review/logout"): Decision("public", ok=303),
    ("GET", "/review/"): Decision("public", ok=303),
    ("GET", "/review/static/{name}"): Decision("public"),
    ("GET", "/review/api/me"): Decision("session"),
    # JSON API
    ("GET", "/review/api/analyses"): Decision("api", Permission.VIEW_TRACES),
    ("POST", "/review/api/analyses/search"): Decision("api", Permission.VIEW_TRACES),
    ("GET", "/review/api/traces/{analysis_id}"): Decision("api", Permission.VIEW_TRACES),
    ("GET", "/review/api/traces/{analysis_id}/images/{position}"): Decision("api", Permission.VIEW_TRACES),
    ("GET", "/review/api/hook-calls"): Decision("api", Permission.VIEW_HOOK_CALLS),
    ("POST", "/review/api/hook-calls/search"): Decision("api", Permission.VIEW_HOOK_CALLS),
    ("GET", "/review/api/dashboard"): Decision("api", Permission.VIEW_DASHBOARDS),
    ("GET", "/review/api/model-card"): Decision("api", Permission.VIEW_MODEL_CARD),
    ("GET", "/review/api/ledger/checkpoint"): Decision("api", Permission.VIEW_LEDGER),
    ("GET", "/review/api/ledger/entries/{index}"): Decision("api", Permission.VIEW_LEDGER),
    ("POST", "/review/api/ledger/verify"): Decision("api", Permission.VERIFY_LEDGER, ok=202),
    ("GET", "/review/api/ledger/verify/{job_id}"): Decision("api", Permission.VERIFY_LEDGER),
    ("GET", "/review/api/analyses/export.csv"): Decision("api", Permission.EXPORT),
    ("GET", "/review/api/traces/{analysis_id}/export.fhir.json"): Decision("api", Permission.EXPORT),
    ("GET", "/review/api/traces/{analysis_id}/export.pdf"): Decision("api", Permission.EXPORT),
    # Pages
    ("POST", "/review/search"): Decision("page", Permission.VIEW_TRACES, ok=303),
    ("GET", "/review/analyses"): Decision("page", Permission.VIEW_TRACES),
    ("GET", "/review/traces/{analysis_id}"): Decision("page", Permission.VIEW_TRACES),
    ("GET", "/review/hook-calls"): Decision("page", Permission.VIEW_HOOK_CALLS),
    ("GET", "/review/dashboards"): Decision("page", Permission.VIEW_DASHBOARDS),
    ("GET", "/review/model-card"): Decision("page", Permission.VIEW_MODEL_CARD),
    ("GET", "/review/ledger"): Decision("page", Permission.VIEW_LEDGER),
}
ROUTE_IDS = [f"{method} {path}" for method, path in DECISIONS]


@dataclass
class ReviewSite:
    app: Any
    store: SeededStore
    clients: dict[Role | None, TestClient]
    csrf: dict[Role | None, str]
    job_id: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewSite]:
    tmp = tmp_path_factory.mktemp("review-authz")
    store = seed(tmp)
    app = review_app(store, ReviewConfig(local_users_file=write_local_users(tmp), secure_cookies=False))
    clients: dict[Role | None, TestClient] = {None: TestClient(app)}
    csrf: dict[Role | None, str] = {None: ""}
    for role in Role:
        clients[role], csrf[role] = sign_in(app, role)
    officer = clients[Role.COMPLIANCE_OFFICER]
    job = officer.post("/review/api/ledger/verify", headers={"X-CSRF-Token": csrf[Role.COMPLIANCE_OFFICER]})
    assert job.status_code == 202
    yield ReviewSite(app, store, clients, csrf, job.json()["id"])


def review_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves under /review."""
    found = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and context.path and context.path.startswith("/review"):
            found |= {(method, context.path) for method in context.methods or ()}
    return found


def test_every_review_route_has_an_authorization_decision(site: ReviewSite) -> None:
    served = review_routes(site.app)
    assert served - set(DECISIONS) == set(), "routes without an authorization decision"
    assert set(DECISIONS) - served == set(), "decisions for routes that no longer exist"
    assert {d.permission for d in DECISIONS.values() if d.permission} == set(Permission)


def _request(site: ReviewSite, role: Role | None, method: str, path: str) -> Response:
    client = site.clients[role]
    url = path.format(
        analysis_id=site.store.analyses["overridden"],
        position=0,
        index=0,
        job_id=site.job_id,
        name="review.css",
    )
    csrf = site.csrf[role]
    send: Callable[..., Response] = client.post if method == "POST" else client.get
    options: dict[str, Any] = {"follow_redirects": False}
    if path == "/review/logout" and role is not None:
        client, csrf = sign_in(site.app, role)  # its own session: signing out must not end the shared one
        send, options["data"] = client.post, {"csrf_token": csrf}
    elif path in ("/review/search", "/review/login/local"):
        options["data"] = {"csrf_token": csrf, "username": "officer", "password": PASSWORD}
    elif method == "POST":
        options["headers"] = {"X-CSRF-Token": csrf}
        if path.endswith("/search"):
            options["json"] = {}
    return send(url, **options)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value if r else "anonymous")
@pytest.mark.parametrize(("method", "path"), list(DECISIONS), ids=ROUTE_IDS)
def test_route_answers_each_role_as_decided(
    site: ReviewSite, role: Role | None, method: str, path: str
) -> None:
    decision = DECISIONS[(method, path)]
    response = _request(site, role, method, path)
    allowed = decision.gate == "public" or (
        role is not None and (decision.permission is None or role in ROLE_PERMISSIONS[decision.permission])
    )
    if allowed:
        assert response.status_code == decision.ok, response.text[:300]
    elif role is None and decision.gate == "page":
        assert response.status_code == 303
        assert response.headers["location"].startswith("/review/login?next=")
    elif role is None:
        assert response.status_code == 401
    else:
        assert response.status_code == 403
        if decision.gate == "page":
            assert "Not allowed" in response.text
    if not allowed:
        assert "pat-1001" not in response.text  # a refusal shows nothing of what the route guards

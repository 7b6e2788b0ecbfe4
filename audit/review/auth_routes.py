"""Sign-in (OIDC code + PKCE, or the local users file), sign-out, and who-am-I."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from audit.review.access_log import SIGNED_IN, record_event
from audit.review.gate import (
    SECURITY_HEADERS,
    SESSION_COOKIE,
    check_csrf,
    check_origin,
    current_session,
    safe_return_path,
)
from audit.review.oidc_client import OidcError, new_code_verifier
from audit.review.reviewer import Reviewer
from audit.review.sessions import PENDING_LOGIN_TTL_S, PendingLogin, PendingLoginUnreadable
from audit.review.state import ReviewState

log = logging.getLogger(__name__)

OIDC_STATE_COOKIE = "vt_review_oidc"
LOGIN_CSRF_COOKIE = "vt_review_login"
LOGIN_ERRORS = {
    "failed": "Sign-in failed. Try again, or ask IT to check the identity provider.",
    "no-role": "You are signed in at the identity provider but have no review role.",
    "expired": "The sign-in took too long or was already used. Start again.",
    "bad-password": "Unknown user name or wrong password.",
}


def _secure(state: ReviewState, request: Request) -> bool:
    return state.config.secure_cookies or request.url.scheme == "https"


def _start_session(state: ReviewState, request: Request, reviewer: Reviewer, return_to: str) -> Response:
    session = state.sessions.create(reviewer)
    record_event(state.ledger, SIGNED_IN, reviewer, {})
    response = RedirectResponse(safe_return_path(return_to), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=state.config.session_ttl_s,
        path="/review",
        httponly=True,
        secure=_secure(state, request),
        samesite="lax",
    )
    response.delete_cookie(OIDC_STATE_COOKIE, path="/review/auth")
    return response


def build_auth_router(state: ReviewState) -> APIRouter:
    router = APIRouter()

    @router.get("/review/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None, error: str | None = None) -> Response:
        """The sign-in page: the IdP button, and the local form when a users file is configured."""
        login_csrf = secrets.token_urlsafe(24)
        response = state.templates.TemplateResponse(
            request,
            "login.html",
            {
                "session": None,
                "oidc": state.oidc is not None,
                "local": state.local_users is not None,
                "next": safe_return_path(next),
                "error": LOGIN_ERRORS.get(error or ""),
                "login_csrf": login_csrf,
            },
        )
        response.headers.update(SECURITY_HEADERS)
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            login_csrf,
            max_age=PENDING_LOGIN_TTL_S,
            path="/review/login",
            httponly=True,
            secure=_secure(state, request),
            samesite="strict",
        )
        return response

    @router.get("/review/login/oidc")
    def login_oidc(request: Request, next: str | None = None) -> Response:
        """Send the browser to the IdP with a fresh state, nonce and PKCE challenge."""
        if state.oidc is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no identity provider is configured")
        verifier, nonce = new_code_verifier(), secrets.token_urlsafe(24)
        pending = PendingLogin(
            code_verifier=verifier,
            nonce=nonce,
            return_to=safe_return_path(next),
            expires_at=time.time() + PENDING_LOGIN_TTL_S,
        )
        key = state.sessions.begin_login(pending)
        try:
            url = state.oidc.authorization_url(state=key, nonce=nonce, verifier=verifier)
        except OidcError as exc:
            log.error("review sign-in unavailable: %s", exc)
            return RedirectResponse("/review/login?error=failed", status_code=303)
        response = RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)
        response.set_cookie(
            OIDC_STATE_COOKIE,
            key,
            max_age=PENDING_LOGIN_TTL_S,
            path="/review/auth",
            httponly=True,
            secure=_secure(state, request),
            samesite="lax",
        )
        return response

    @router.get("/review/auth/callback")
    def oidc_callback(
        request: Request,
        code: str | None = None,
        iss: str | None = None,
        error: str | None = None,
    ) -> Response:
        """Finish the sign-in: the state must be this browser's, then the code is redeemed once."""
        if state.oidc is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no identity provider is configured")
        given_state = request.query_params.get("state", "")
        cookie_state = request.cookies.get(OIDC_STATE_COOKIE, "")
        if not given_state or not secrets.compare_digest(given_state, cookie_state):
            return RedirectResponse("/review/login?error=expired", status_code=303)
        try:
            pending = state.sessions.finish_login(given_state)
        except PendingLoginUnreadable:
            log.warning(
                "review sign-in refused: the pending sign-in was sealed with another login key "
                "(replicas must share it) or was altered in the database"
            )
            return RedirectResponse("/review/login?error=failed", status_code=303)
        if pending is None:
            return RedirectResponse("/review/login?error=expired", status_code=303)
        if error or not code:
            log.warning("review sign-in refused by the IdP: %s", (error or "no code")[:40])
            return RedirectResponse("/review/login?error=failed", status_code=303)
        try:
            state.oidc.check_response_issuer(iss)
            reviewer = state.oidc.sign_in(code=code, verifier=pending.code_verifier, nonce=pending.nonce)
        except OidcError as exc:
            log.warning("review sign-in failed: %s", exc)
            return RedirectResponse("/review/login?error=failed", status_code=303)
        if not reviewer.roles:
            return RedirectResponse("/review/login?error=no-role", status_code=303)
        return _start_session(state, request, reviewer, pending.return_to)

    @router.post("/review/login/local")
    def login_local(
        request: Request,
        username: Annotated[str, Form(max_length=100)],
        password: Annotated[str, Form(max_length=200)],
        csrf_token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "",
    ) -> Response:
        if state.local_users is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "local sign-in is not configured")
        check_origin(request)
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not secrets.compare_digest(cookie, csrf_token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        reviewer = state.local_users.authenticate(username, password)
        if reviewer is None:
            return RedirectResponse("/review/login?error=bad-password", status_code=303)
        if not reviewer.roles:
            return RedirectResponse("/review/login?error=no-role", status_code=303)
        return _start_session(state, request, reviewer, next)

    @router.post("/review/logout")
    def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
        session = current_session(state, request)
        response = RedirectResponse("/review/login", status_code=status.HTTP_303_SEE_OTHER)
        if session is not None:
            check_csrf(session, request, csrf_token)
            state.sessions.end(session.id)
        response.delete_cookie(SESSION_COOKIE, path="/review")
        return response

    @router.get("/review/api/me")
    def me(request: Request) -> dict[str, Any]:
        session = current_session(state, request)
        if session is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in to the review app first")
        r = session.reviewer
        return {"subject": r.subject, "name": r.name, "roles": sorted(r.roles), "via": r.via}

    return router

"""Sign-in and role checks for every route, and CSRF checks for every state-changing one.

API calls answer 401 without a session and 403 without the permission. Pages send an anonymous visitor
to the sign-in page and show a 403 page to a signed-in reviewer whose roles do not allow the page. Every
POST needs the session's CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field) and, when the
browser sends an Origin, one that matches this host.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode, urlsplit

from fastapi import HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response

from audit.review.roles import Permission
from audit.review.sessions import ReviewSession
from audit.review.state import ReviewState

SESSION_COOKIE = "vt_review_session"
CSRF_HEADER = "x-csrf-token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self' http: https:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def current_session(state: ReviewState, request: Request) -> ReviewSession | None:
    return state.sessions.get(request.cookies.get(SESSION_COOKIE))


def api_session(state: ReviewState, request: Request, permission: Permission) -> ReviewSession:
    """The caller's session; HTTPException 401 / 403 otherwise."""
    session = current_session(state, request)
    if session is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "sign in to the review app first", {"WWW-Authenticate": "Cookie"}
        )
    if not session.reviewer.may(permission):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"your roles do not allow {permission.value}")
    return session


def page_session(state: ReviewState, request: Request, permission: Permission) -> ReviewSession | Response:
    """The caller's session, or the response to send instead (sign-in redirect, 403 page)."""
    session = current_session(state, request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            "/review/login?" + urlencode({"next": target}), status_code=status.HTTP_303_SEE_OTHER
        )
    if not session.reviewer.may(permission):
        return state.templates.TemplateResponse(
            request,
            "forbidden.html",
            {"session": session, "permission": permission.value},
            status_code=status.HTTP_403_FORBIDDEN,
        )
    return session


def check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin request refused")


def check_csrf(session: ReviewSession, request: Request, form_token: str | None = None) -> None:
    """HTTPException 403 unless the request carries this session's CSRF token."""
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER) or form_token or ""
    if not secrets.compare_digest(sent, session.csrf_token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")


def safe_return_path(value: str | None) -> str:
    """Only paths inside the review app: an open redirect would hand a signed-in session to anyone."""
    if not value or not value.startswith("/review/") or value.startswith("//") or "\\" in value:
        return "/review/analyses"
    return value

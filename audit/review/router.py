"""``build_review_router``: the compliance review app (pages, JSON API, sign-in) as one router.

The composition root mounts it with ``app.include_router(build_review_router(...))``; it serves everything
under ``/review`` including its static files, so nothing else has to be mounted.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.templating import Jinja2Templates

from audit.ledger import Ledger
from audit.review.api_routes import build_api_router
from audit.review.auth_routes import build_auth_router
from audit.review.config import ReviewConfig
from audit.review.local_users import LocalUsers
from audit.review.login_sealing import LOGIN_KEY_FILE, LoginSealer
from audit.review.model_card import ModelCard
from audit.review.oidc_client import OidcClient
from audit.review.page_routes import build_page_router
from audit.review.sessions import SessionStore
from audit.review.source import TraceSource
from audit.review.state import PACKAGE_DIR, ReviewState
from audit.review.verify_jobs import VerifyJobs

log = logging.getLogger(__name__)


def build_review_router(source: TraceSource, ledger: Ledger, config: ReviewConfig) -> APIRouter:
    """The review app over ``source`` and ``ledger``.

    Raises ValueError when ``config`` allows no way to sign in, or names an invalid users or model card
    file, or an unusable login key: a review app nobody can enter should fail at start-up, not at the
    first visit.
    """
    if config.oidc is None and config.local_users_file is None:
        raise ValueError("the review app needs an OIDC provider or a local users file to sign anyone in")
    if not config.secure_cookies:
        log.warning("review cookies are not marked Secure: plain-HTTP test or demo use only")
    login_sealer = None
    if config.oidc is not None:
        key = config.login_key.get_secret_value() if config.login_key else None
        login_sealer = LoginSealer.from_key_or_file(key, ledger.config.key_dir / LOGIN_KEY_FILE)
    state = ReviewState(
        source=source,
        ledger=ledger,
        config=config,
        sessions=SessionStore(ledger.engine, config.session_ttl_s, login_sealer),
        oidc=OidcClient(config.oidc) if config.oidc else None,
        local_users=LocalUsers.load(config.local_users_file) if config.local_users_file else None,
        model_card=ModelCard.load(config.model_card_file),
        verify_jobs=VerifyJobs(ledger),
        templates=Jinja2Templates(directory=str(PACKAGE_DIR / "templates")),
    )
    router = APIRouter(tags=["review"])
    router.include_router(build_auth_router(state))
    router.include_router(build_api_router(state))
    router.include_router(build_page_router(state))
    return router

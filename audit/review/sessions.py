"""Server-side review sessions and pending OIDC sign-ins, in the ledger's database.

The browser holds only a random session id (HttpOnly cookie); roles, the CSRF token and saved searches
stay on the server, so nothing a reviewer searched for (patient ids) ever travels in a URL. They live in
``audit_review_*`` tables (audit_0002), so every API replica behind a load balancer sees the same
sessions. Rows are keyed by the SHA-256 of the session id or ``state``, never the value; expiry is
checked by every read and expired rows are purged by the next write. A pending sign-in is taken by
one ``DELETE … RETURNING``: a replayed callback finds nothing on any replica.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from audit.review.reviewer import Reviewer
from audit.review.session_tables import review_logins, review_searches, review_sessions
from audit.review.source import AnalysisFilters

PENDING_LOGIN_TTL_S = 600
MAX_SAVED_SEARCHES = 50


@dataclass
class ReviewSession:
    id: str
    reviewer: Reviewer
    csrf_token: str
    expires_at: float
    searches: dict[str, AnalysisFilters] = field(default_factory=dict)
    """Saved searches by opaque token, oldest first (``SessionStore.save_search`` adds one)."""


@dataclass(frozen=True)
class PendingLogin:
    """What the callback needs to finish an authorization code + PKCE sign-in."""

    code_verifier: str
    nonce: str
    return_to: str
    expires_at: float


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class SessionStore:
    """TTL-bound sessions and pending sign-ins, shared through ``engine``'s database."""

    def __init__(self, engine: sa.Engine, ttl_s: int) -> None:
        self._engine = engine
        self._ttl_s = ttl_s

    def create(self, reviewer: Reviewer) -> ReviewSession:
        session = ReviewSession(
            id=secrets.token_urlsafe(32),
            reviewer=reviewer,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=time.time() + self._ttl_s,
        )
        with self._engine.begin() as conn:
            self._purge_sessions(conn)
            conn.execute(
                review_sessions.insert().values(
                    id_sha256=_digest(session.id),
                    reviewer=reviewer.model_dump_json(),
                    csrf_token=session.csrf_token,
                    expires_at=session.expires_at,
                )
            )
        return session

    def get(self, session_id: str | None) -> ReviewSession | None:
        if not session_id:
            return None
        key = _digest(session_id)
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(review_sessions).where(
                    review_sessions.c.id_sha256 == key, review_sessions.c.expires_at > time.time()
                )
            ).first()
            if row is None:
                return None
            saved = conn.execute(
                sa.select(review_searches.c.token, review_searches.c.filters)
                .where(review_searches.c.session_sha256 == key)
                .order_by(review_searches.c.saved_at, review_searches.c.token)
            ).all()
        return ReviewSession(
            id=session_id,
            reviewer=Reviewer.model_validate_json(row.reviewer),
            csrf_token=row.csrf_token,
            expires_at=row.expires_at,
            searches={token: AnalysisFilters.model_validate_json(filters) for token, filters in saved},
        )

    def save_search(self, session: ReviewSession, filters: AnalysisFilters) -> str:
        """Keep ``filters`` under a new opaque token (the oldest go first past ``MAX_SAVED_SEARCHES``)."""
        token = secrets.token_urlsafe(9)
        key = _digest(session.id)
        with self._engine.begin() as conn:
            conn.execute(
                review_searches.insert().values(
                    session_sha256=key, token=token, filters=filters.model_dump_json(), saved_at=time.time()
                )
            )
            beyond = conn.scalars(
                sa.select(review_searches.c.token)
                .where(review_searches.c.session_sha256 == key)
                .order_by(review_searches.c.saved_at.desc(), review_searches.c.token.desc())
                .offset(MAX_SAVED_SEARCHES)
            ).all()
            if beyond:
                conn.execute(
                    review_searches.delete().where(
                        review_searches.c.session_sha256 == key, review_searches.c.token.in_(beyond)
                    )
                )
        session.searches[token] = filters
        while len(session.searches) > MAX_SAVED_SEARCHES:
            session.searches.pop(next(iter(session.searches)))
        return token

    def end(self, session_id: str) -> None:
        key = _digest(session_id)
        with self._engine.begin() as conn:
            conn.execute(review_searches.delete().where(review_searches.c.session_sha256 == key))
            conn.execute(review_sessions.delete().where(review_sessions.c.id_sha256 == key))

    def begin_login(self, pending: PendingLogin) -> str:
        """Store ``pending`` under a new ``state`` value and return it."""
        state = secrets.token_urlsafe(24)
        with self._engine.begin() as conn:
            conn.execute(review_logins.delete().where(review_logins.c.expires_at <= time.time()))
            conn.execute(
                review_logins.insert().values(
                    state_sha256=_digest(state),
                    code_verifier=pending.code_verifier,
                    nonce=pending.nonce,
                    return_to=pending.return_to,
                    expires_at=pending.expires_at,
                )
            )
        return state

    def finish_login(self, state: str) -> PendingLogin | None:
        """The unexpired pending sign-in for ``state``, deleted in the same statement: usable once."""
        with self._engine.begin() as conn:
            row = conn.execute(
                review_logins.delete()
                .where(
                    review_logins.c.state_sha256 == _digest(state), review_logins.c.expires_at > time.time()
                )
                .returning(
                    review_logins.c.code_verifier,
                    review_logins.c.nonce,
                    review_logins.c.return_to,
                    review_logins.c.expires_at,
                )
            ).first()
        if row is None:
            return None
        return PendingLogin(
            code_verifier=row.code_verifier,
            nonce=row.nonce,
            return_to=row.return_to,
            expires_at=row.expires_at,
        )

    def _purge_sessions(self, conn: sa.Connection) -> None:
        now = time.time()
        expired = sa.select(review_sessions.c.id_sha256).where(review_sessions.c.expires_at <= now)
        conn.execute(review_searches.delete().where(review_searches.c.session_sha256.in_(expired)))
        conn.execute(review_sessions.delete().where(review_sessions.c.expires_at <= now))

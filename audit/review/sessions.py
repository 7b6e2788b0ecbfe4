"""Server-side review sessions and pending OIDC sign-ins, in the ledger's database.

The browser holds only a random session id (HttpOnly cookie); roles, the CSRF token and saved searches
stay on the server, so nothing a reviewer searched for (patient ids) ever travels in a URL. They live in
``audit_review_*`` tables (audit_0002), so every API replica behind a load balancer sees the same
sessions. Rows are keyed by the SHA-256 of the session id or ``state``, never the value; expiry is
checked by every read and expired rows are purged by the next write. A pending sign-in is taken by
one ``DELETE … RETURNING``: a replayed callback finds nothing on any replica. Its PKCE verifier is
stored sealed and bound to the row (``login_sealing``); one that does not open is refused.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from audit.review.login_sealing import LoginSealer, row_digest
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


class PendingLoginUnreadable(Exception):
    """A pending sign-in was found but its verifier does not open: another key, or an altered row.

    The row is gone either way (taken by the same ``DELETE``), so it cannot be retried.
    """


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class SessionStore:
    """TTL-bound sessions and pending sign-ins, shared through ``engine``'s database.

    ``login_sealer`` seals PKCE verifiers; without one (no OIDC provider configured) there are no
    pending sign-ins to keep, and ``begin_login`` refuses.
    """

    def __init__(self, engine: sa.Engine, ttl_s: int, login_sealer: LoginSealer | None = None) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._login_sealer = login_sealer

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
        """Store ``pending`` (its verifier sealed) under a new ``state`` value and return it."""
        if self._login_sealer is None:
            raise RuntimeError("no review login key: pending sign-ins need one (is OIDC configured?)")
        state = secrets.token_urlsafe(24)
        key = _digest(state)
        row = _login_row(key, pending.nonce, pending.return_to, pending.expires_at)
        with self._engine.begin() as conn:
            conn.execute(review_logins.delete().where(review_logins.c.expires_at <= time.time()))
            conn.execute(
                review_logins.insert().values(
                    state_sha256=key,
                    code_verifier_sealed=self._login_sealer.seal(pending.code_verifier, row=row),
                    nonce=pending.nonce,
                    return_to=pending.return_to,
                    expires_at=pending.expires_at,
                )
            )
        return state

    def finish_login(self, state: str) -> PendingLogin | None:
        """The unexpired pending sign-in for ``state``, deleted in the same statement: usable once.

        Raises PendingLoginUnreadable when the row exists but its sealed verifier does not open.
        """
        key = _digest(state)
        with self._engine.begin() as conn:
            row = conn.execute(
                review_logins.delete()
                .where(review_logins.c.state_sha256 == key, review_logins.c.expires_at > time.time())
                .returning(
                    review_logins.c.code_verifier_sealed,
                    review_logins.c.nonce,
                    review_logins.c.return_to,
                    review_logins.c.expires_at,
                )
            ).first()
        if row is None:
            return None
        verifier = None
        if self._login_sealer is not None:
            bound = _login_row(key, row.nonce, row.return_to, row.expires_at)
            verifier = self._login_sealer.open(row.code_verifier_sealed, row=bound)
        if verifier is None:
            raise PendingLoginUnreadable("the pending sign-in's verifier does not open")
        return PendingLogin(
            code_verifier=verifier,
            nonce=row.nonce,
            return_to=row.return_to,
            expires_at=row.expires_at,
        )

    def _purge_sessions(self, conn: sa.Connection) -> None:
        now = time.time()
        expired = sa.select(review_sessions.c.id_sha256).where(review_sessions.c.expires_at <= now)
        conn.execute(review_searches.delete().where(review_searches.c.session_sha256.in_(expired)))
        conn.execute(review_sessions.delete().where(review_sessions.c.expires_at <= now))


def _login_row(state_sha256: str, nonce: str, return_to: str, expires_at: float) -> bytes:
    return row_digest(state_sha256=state_sha256, nonce=nonce, return_to=return_to, expires_at=expires_at)

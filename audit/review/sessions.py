"""Server-side review sessions and pending OIDC sign-ins, kept in this process's memory.

The browser holds only a random session id (HttpOnly cookie); roles, the CSRF token and saved searches
stay here, so nothing a reviewer searched for (patient ids) ever travels in a URL. Memory is per process:
several API replicas need sticky sessions until a shared store is added behind the same interface.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from audit.review.reviewer import Reviewer
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

    def save_search(self, filters: AnalysisFilters) -> str:
        """Keep ``filters`` under a new opaque token (the oldest go first past ``MAX_SAVED_SEARCHES``)."""
        token = secrets.token_urlsafe(9)
        self.searches[token] = filters
        while len(self.searches) > MAX_SAVED_SEARCHES:
            self.searches.pop(next(iter(self.searches)))
        return token


@dataclass(frozen=True)
class PendingLogin:
    """What the callback needs to finish an authorization code + PKCE sign-in."""

    code_verifier: str
    nonce: str
    return_to: str
    expires_at: float


class SessionStore:
    """Thread-safe, TTL-bound sessions and pending sign-ins."""

    def __init__(self, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._sessions: dict[str, ReviewSession] = {}
        self._pending: dict[str, PendingLogin] = {}
        self._lock = threading.Lock()

    def create(self, reviewer: Reviewer) -> ReviewSession:
        session = ReviewSession(
            id=secrets.token_urlsafe(32),
            reviewer=reviewer,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=time.time() + self._ttl_s,
        )
        with self._lock:
            self._drop_expired()
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> ReviewSession | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at < time.time():
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def begin_login(self, pending: PendingLogin) -> str:
        """Store ``pending`` under a new ``state`` value and return it."""
        state = secrets.token_urlsafe(24)
        with self._lock:
            self._drop_expired()
            self._pending[state] = pending
        return state

    def finish_login(self, state: str) -> PendingLogin | None:
        """The pending sign-in for ``state``, removed so that a callback can be used once only."""
        with self._lock:
            pending = self._pending.pop(state, None)
        if pending is None or pending.expires_at < time.time():
            return None
        return pending

    def _drop_expired(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires_at < now]:
            del self._sessions[key]
        for key in [k for k, p in self._pending.items() if p.expires_at < now]:
            del self._pending[key]

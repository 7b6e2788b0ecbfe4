"""Server-side state of launches in progress and of open viewer sessions.

Nothing secret reaches the browser except an opaque session handle: the PKCE verifier and the state
wait here for the callback, and the access token stays here for the session's FHIR reads. The handle
travels in a request header (``X-Viewer-Session``) set by the page's script, never in a cookie (the
viewer runs in an EHR iframe, where third-party cookies are blocked) and never in a URL.

In memory, per process: an API behind a load balancer needs sticky sessions for ``/viewer`` or a
shared store implementing the same three methods.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PendingLaunch:
    """What a launch left for its callback; ``code_verifier`` None means it was lost (refused)."""

    state: str
    iss: str
    launch: str | None
    report_id: str | None
    code_verifier: str | None
    authorization_endpoint: str
    token_endpoint: str
    auth_server_issuer: str | None
    jwks_uri: str | None = None
    created: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ViewerSession:
    """An authorised clinician session: the EHR's token and the context it was granted for."""

    handle: str
    iss: str
    access_token: str
    patient_id: str
    encounter_id: str | None
    user: str | None
    scopes: tuple[str, ...]
    report_id: str
    card_uuid: str | None
    expires: float


class LaunchStore:
    """Pending launches (single use, ``launch_ttl_s``) and sessions (until the token expires)."""

    def __init__(self, *, launch_ttl_s: float) -> None:
        self._launch_ttl_s = launch_ttl_s
        self._pending: dict[str, PendingLaunch] = {}
        self._sessions: dict[str, ViewerSession] = {}
        self._lock = threading.Lock()

    def put_pending(self, pending: PendingLaunch) -> None:
        with self._lock:
            self._expire()
            self._pending[pending.state] = pending

    def take_pending(self, state: str) -> PendingLaunch | None:
        """The launch for ``state``, removed so that a replayed callback finds nothing."""
        with self._lock:
            self._expire()
            return self._pending.pop(state, None)

    def new_handle(self) -> str:
        return secrets.token_urlsafe(32)

    def put_session(self, session: ViewerSession) -> None:
        with self._lock:
            self._sessions[session.handle] = session

    def get_session(self, handle: str) -> ViewerSession | None:
        with self._lock:
            self._expire()
            return self._sessions.get(handle)

    def _expire(self) -> None:
        now = time.monotonic()
        for state in [s for s, p in self._pending.items() if now - p.created > self._launch_ttl_s]:
            del self._pending[state]
        for handle in [h for h, s in self._sessions.items() if s.expires < now]:
            del self._sessions[handle]

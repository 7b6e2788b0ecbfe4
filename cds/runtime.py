"""Everything a CDS request needs, built once per app by ``create_app`` and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger
from cds.client_auth.verify import ClientTokenVerifier
from cds.group_commit import GroupCommitWriter
from cds.prefetch import PrefetchFetcher
from cds.service_catalog import RegisteredService


@dataclass
class CdsRuntime:
    public_base_url: str
    session_factory: sessionmaker[Session]
    ledger: Ledger
    verifier: ClientTokenVerifier | None
    """None only when JWT verification was switched off explicitly (embedded demo)."""
    fetcher: PrefetchFetcher
    services: dict[str, RegisteredService]
    http: httpx.AsyncClient
    smart_viewer: bool = False
    """The SMART draft viewer is mounted: cards link to it with ``smart`` links the EHR launches."""
    commits: GroupCommitWriter = field(init=False)
    """The hook path's writer: ``jti`` claims, card rows and audit entries of concurrent calls together."""

    def __post_init__(self) -> None:
        self.commits = GroupCommitWriter.for_sessions(self.session_factory, self.ledger)
        if self.verifier is not None:
            self.verifier.replay.share_writer(self.commits)

    def audience(self, path: str) -> str:
        """The ``aud`` a client must sign for this path: our public URL, not whatever Host was sent."""
        return self.public_base_url + path

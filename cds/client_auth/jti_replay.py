"""The ``jti`` replay cache, in the database so every API replica sees every token.

Each accepted token's ``iss`` + ``jti`` is recorded with the token's expiry; the primary key decides
which of two concurrent uses (in any replica) is first, and the other is the replay. A ``jti`` whose
row expired may be reused (its old token is expired anyway); expired rows are purged now and then.

Claims go through a ``GroupCommitWriter``, so the claims of concurrent calls share one transaction
(with the card rows of other calls when the writer is the hook path's, see ``CdsRuntime``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from cds.group_commit import GroupCommitWriter

MAX_KEY_CHARS = 512
"""The column's width: longer ``iss`` + ``jti`` pairs are cut (both are bounded by the token size)."""


@dataclass(frozen=True)
class JtiClaim:
    """A verified token's ``iss`` + ``jti`` as stored, and until when it is held."""

    key: str
    expires_at: datetime


class JtiReplayCache:
    def __init__(self, session_factory: sessionmaker[Session], *, purge_every_s: float = 60.0) -> None:
        self._session_factory = session_factory
        self.purge_every_s = purge_every_s
        self._writer: GroupCommitWriter | None = None

    def share_writer(self, writer: GroupCommitWriter) -> None:
        """Claim through ``writer`` (the hook path's) instead of a writer of our own."""
        writer.purge_every_s = self.purge_every_s
        self._writer = writer

    @staticmethod
    def claim_for(iss: str, jti: str, expires_at: datetime) -> JtiClaim:
        return JtiClaim(f"{iss}\x1f{jti}"[:MAX_KEY_CHARS], expires_at)

    async def first_use(self, claim: JtiClaim) -> bool:
        """Record the token; False when the same ``iss`` + ``jti`` was seen and has not expired."""
        if self._writer is None:
            self._writer = GroupCommitWriter.for_sessions(self._session_factory, ledger=None)
            self._writer.purge_every_s = self.purge_every_s
        return await self._writer.claim_jti(claim.key, claim.expires_at)

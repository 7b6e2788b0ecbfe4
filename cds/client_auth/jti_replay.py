"""The ``jti`` replay cache, in the database so every API replica sees every token.

Each accepted token's ``iss`` + ``jti`` is inserted with the token's expiry; the primary key makes a
second insert fail in whichever replica tries it, which is the replay. Rows past their expiry are
purged now and then; a ``jti`` whose row expired may be reused (its old token is expired anyway).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cds.commit_policy import commit_without_flush_wait
from integrations.store.models import SeenJwtId


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; everything we store is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class JtiReplayCache:
    def __init__(self, session_factory: sessionmaker[Session], *, purge_every_s: float = 60.0) -> None:
        self._session_factory = session_factory
        self.purge_every_s = purge_every_s
        self._last_purge = 0.0

    def first_use(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """Record the token; False when the same ``iss`` + ``jti`` was seen and has not expired."""
        key = f"{iss}\x1f{jti}"[:512]
        now = datetime.now(UTC)
        with self._session_factory() as session:
            commit_without_flush_wait(session)
            self._purge_if_due(session, now)
            session.add(SeenJwtId(key=key, expires_at=expires_at))
            try:
                session.commit()
                return True
            except IntegrityError:
                session.rollback()
            seen = session.scalar(select(SeenJwtId).where(SeenJwtId.key == key).with_for_update())
            if seen is None:
                return self.first_use(iss, jti, expires_at)  # purged between our insert and read
            if _aware(seen.expires_at) > now:
                return False
            seen.expires_at = expires_at
            session.commit()
            return True

    def _purge_if_due(self, session: Session, now: datetime) -> None:
        tick = time.monotonic()
        if tick - self._last_purge < self.purge_every_s:
            return
        self._last_purge = tick
        session.execute(delete(SeenJwtId).where(SeenJwtId.expires_at < now))

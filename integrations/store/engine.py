"""One engine per process, tuned for the backend it talks to."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from integrations.store.config import StoreConfig


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the SCP and the worker write; busy_timeout turns lock contention
    # between our processes into a short wait instead of "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(config: StoreConfig) -> Engine:
    if config.database_url.startswith("sqlite"):
        engine = create_engine(config.database_url, echo=config.echo_sql)
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(config.database_url, echo=config.echo_sql, pool_pre_ping=True, pool_size=10)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)

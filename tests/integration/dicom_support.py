"""Shared pieces of the DICOM gateway tests: a real store (SQLite or PostgreSQL) with the real ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger, LedgerConfig
from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.migrate import upgrade_database

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class DicomStore:
    engine: Engine
    sessions: sessionmaker[Session]
    ledger: Ledger

    def entries(self, kind: str | None = None) -> list[Any]:
        return [e for e in self.ledger.iter_entries() if kind is None or e.kind == kind]


def make_dicom_store(tmp_path: Path, database_url: str | None = None) -> DicomStore:
    engine = make_engine(StoreConfig(database_url=database_url or f"sqlite:///{tmp_path / 'vt.db'}"))
    upgrade_database(engine)
    ledger = Ledger(engine, LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=None))
    return DicomStore(engine, make_session_factory(engine), ledger)


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database on the shared server, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def dicom_store_for(backend: str, tmp_path: Path, prefix: str) -> Iterator[DicomStore]:
    """The body of a store fixture parametrised over "sqlite" and "postgres" (a database of its own)."""
    if backend == "sqlite":
        made = make_dicom_store(tmp_path)
        yield made
        made.engine.dispose()
        return
    with postgres_database(prefix) as url:
        made = make_dicom_store(tmp_path, url)
        yield made
        made.engine.dispose()

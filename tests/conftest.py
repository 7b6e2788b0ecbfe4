"""Shared fixtures: real PostgreSQL databases and RabbitMQ vhosts made per test, a tiny model, FHIR."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fhir_fixtures import fhir_client, fhir_server  # noqa: F401  (fixtures)

PG_ADMIN_DSN = os.environ.get("VERITRACE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
RABBIT_URL = os.environ.get("VERITRACE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")


@pytest.fixture(autouse=True, scope="session")
def _short_generations() -> Iterator[None]:
    """Untrained tiny models fill every string of the report schema to its maximum, which takes a CPU
    minute per report at the production cap; tests that spawn workers only need the path, so they get a
    short cap (a cut-off report is parsed as empty and traced). The demo keeps the production default."""
    previous = os.environ.setdefault("VERITRACE_MODEL_MAX_NEW_TOKENS", "384")
    yield
    if previous == "384":
        os.environ.pop("VERITRACE_MODEL_MAX_NEW_TOKENS", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the real server, dropped afterwards."""
    name = f"vt_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'veritrace.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs a test on both supported databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'veritrace.db'}"
    else:
        yield from fresh_postgres_database()


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A private vhost on the real RabbitMQ, so leftover messages of other runs never reach this test."""
    vhost = f"vt-test-{secrets.token_hex(4)}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"{RABBIT_URL}/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL saved to disk once per session and loaded through the real path."""
    from model.tiny import make_tiny

    return make_tiny("qwen2_5_vl", tmp_path_factory.mktemp("models") / "tiny-qwen2_5_vl")


@pytest.fixture
def port_factory() -> Callable[[], int]:
    return free_port

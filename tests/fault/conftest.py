"""Fixtures of the fault tests: a deployment on a fresh PostgreSQL database and a private RabbitMQ vhost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.harness import Deployment


@pytest.fixture
def deployment(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, tiny_model_dir: Path
) -> Iterator[Deployment]:
    """PG + RabbitMQ + the tiny model, migrated; every process it started is stopped afterwards."""
    deployment = Deployment.create(
        tmp_path / "home",
        database_url=postgres_url,
        broker_url=rabbitmq_url,
        model_path=str(tiny_model_dir),
    )
    upgraded = deployment.run_cli("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    try:
        yield deployment
    finally:
        deployment.stop_all()

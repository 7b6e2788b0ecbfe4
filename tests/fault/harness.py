"""Real Veritrace processes for the fault tests: `python -m cds.cli api|dicom|worker` on PG + RabbitMQ.

Each process gets the same VERITRACE_* environment (as a deployment would); a test kills, stops and
restarts them, then checks the database and the ledger. Nothing here is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from audit import Ledger
from cds.settings import Settings
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.models import Analysis, Report
from tests.conftest import free_port


def wait_until(
    condition: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.25, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Deployment:
    """One set of VERITRACE_* variables and the processes started with it."""

    home: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _engine: Engine | None = None

    @classmethod
    def create(cls, home: Path, **variables: str) -> Deployment:
        env = {
            "VERITRACE_HOME": str(home),
            "VERITRACE_STABLE_AGE": "1",
            "VERITRACE_API_PORT": str(free_port()),
            "VERITRACE_DICOM_PORT": str(free_port()),
            "VERITRACE_CDS_REQUIRE_JWT": "false",
            **{f"VERITRACE_{key.upper()}": value for key, value in variables.items()},
        }
        home.mkdir(parents=True, exist_ok=True)
        (home / "logs").mkdir(exist_ok=True)
        return cls(home=home, env=env)

    def settings(self, **overrides: str) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(self.env)
            os.environ.update({f"VERITRACE_{k.upper()}": v for k, v in overrides.items()})
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings().store_config())
        return self._engine

    def session(self) -> Session:
        return make_session_factory(self.engine)()

    def ledger(self) -> Ledger:
        return Ledger(self.engine, self.settings().ledger_config())

    def run_cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cds.cli", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def spawn(self, name: str, *args: str, **overrides: str) -> subprocess.Popen[bytes]:
        """Start `python -m cds.cli <args>` as `name`; its output goes to home/logs/<name>.log."""
        env = {**os.environ, **self.env, **{f"VERITRACE_{k.upper()}": v for k, v in overrides.items()}}
        log = (self.home / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cds.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.processes[name] = process
        return process

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL: no cleanup, no ack, no goodbye to the broker or the database."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        if self._engine is not None:
            self._engine.dispose()

    def wait_http(self, url: str, *, timeout_s: float = 90) -> None:
        def up() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode}: {self.log_tail(name)}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=timeout_s, what=url)

    def wait_log(self, name: str, text: str, *, timeout_s: float = 120) -> None:
        def seen() -> bool:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}: {self.log_tail(name)}")
            return text in self.log_tail(name, chars=200_000)

        wait_until(seen, timeout_s=timeout_s, what=f"{text!r} in {name}.log")

    def wait_dicom(self, port: int, *, timeout_s: float = 90) -> None:
        def echo() -> bool:
            done = subprocess.run(
                ["echoscu", "-aec", "VERITRACE", "127.0.0.1", str(port)], capture_output=True, timeout=10
            )
            return done.returncode == 0

        wait_until(echo, timeout_s=timeout_s, interval_s=0.5, what=f"C-ECHO on {port}")

    def analyses(self) -> list[Analysis]:
        with self.session() as session:
            return list(session.scalars(select(Analysis)))

    def report_count(self, analysis_id: str | None = None) -> int:
        with self.session() as session:
            query = select(func.count(Report.id))
            if analysis_id is not None:
                query = query.where(Report.analysis_id == analysis_id)
            return int(session.scalar(query) or 0)

    def ledger_kinds(self) -> list[str]:
        ledger = self.ledger()
        return [entry.kind for entry in ledger.iter_entries()]


def storescu(
    port: int, paths: Iterable[Path], *, calling_ae: str = "TEST_PACS"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aet", calling_ae, "-aec", "VERITRACE", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def study_uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


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

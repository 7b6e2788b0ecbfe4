"""The stand-in EHR of ``deploy/smart-ehr`` (Node, oidc-provider) as a child process.

The demo starts it so that a card's ``smart`` link opens the draft viewer through a real SMART App
Launch; the viewer tests start it the same way. It needs ``node`` on the PATH and the folder's
``node_modules`` (``npm ci`` there, done by ``scripts/ensure-test-services``); ``unavailable_reason``
says in one line which is missing, so a caller can fall back instead of failing.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EHR_DIR = Path(__file__).resolve().parents[1] / "deploy" / "smart-ehr"
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SmartClient:
    """An app registered at the EHR's authorization server (confidential, ``client_secret_basic``)."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True)
class SmartEhrConfig:
    """What ``ehr.mjs`` reads (see ``deploy/smart-ehr/config.example.json``)."""

    port: int
    fhir_upstream: str
    fhir_upstream_token: str
    user: str
    standalone_patient: str
    clients: tuple[SmartClient, ...] = field(default=())
    host: str = "127.0.0.1"

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "fhir_upstream": self.fhir_upstream,
            "fhir_upstream_token": self.fhir_upstream_token,
            "user": self.user,
            "standalone_patient": self.standalone_patient,
            "clients": [
                {
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "redirect_uris": list(c.redirect_uris),
                }
                for c in self.clients
            ],
        }


@dataclass(frozen=True)
class RunningSmartEhr:
    base_url: str

    @property
    def iss(self) -> str:
        """The FHIR base the EHR launches apps with (``iss``)."""
        return f"{self.base_url}/fhir"


def unavailable_reason(ehr_dir: Path = EHR_DIR) -> str | None:
    """None when the stand-in can start; else why not, in one line."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (ehr_dir / "ehr.mjs").is_file():
        return f"{ehr_dir} is missing (not a source checkout)"
    if not (ehr_dir / "node_modules" / "oidc-provider").is_dir():
        return f"its Node modules are not installed (run: cd {ehr_dir} && npm ci)"
    return None


@contextmanager
def running_smart_ehr(
    config: SmartEhrConfig, work_dir: Path, *, ehr_dir: Path = EHR_DIR
) -> Iterator[RunningSmartEhr]:
    """Start ``ehr.mjs`` with ``config`` (written to ``work_dir``, 0600: it holds client secrets).

    Returns once the process printed ``READY``; raises ``RuntimeError`` with its log when it does not
    within ``READY_TIMEOUT_S``. The process is terminated on exit.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / "smart-ehr.json"
    descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(config.as_json(), handle)
    log_path = work_dir / "smart-ehr.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["node", str(ehr_dir / "ehr.mjs"), str(config_path)],
            cwd=ehr_dir,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            _wait_ready(process, log_path)
            yield RunningSmartEhr(base_url=f"http://{config.host}:{config.port}")
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def _wait_ready(process: subprocess.Popen[str], log_path: Path) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(timeout=left):
                line = process.stdout.readline()
                if line.startswith("READY"):
                    return
                if not line:  # stdout closed: the process ended
                    break
    process.poll()
    raise RuntimeError(
        f"the stand-in EHR did not start (exit {process.returncode}): {log_path.read_text()[-2000:]}"
    )

"""Run sekmet-fhir, a pure-Python FHIR R4 server on SQLite, as a child process.

The demo and the tests need a real FHIR server that speaks the same HTTP a hospital's does. sekmet-fhir
is a FastAPI app; we start it with ``python -m uvicorn sekmet.main:app_factory --factory`` and point it
at a ``settings.yaml`` we write into the data directory, so its SQLite file (``sekmet.db``), its keys and
its log stay there. Its workflow simulator is switched off: it would answer MedicationRequests and
ServiceRequests with resources of its own and change what a test reads back. Its inbound traffic log is
off too: it would copy every request body, patient data included, into the database.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from integrations.fhir.errors import FhirUnavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now; another process may still take it before we bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalFhirServer:
    """sekmet-fhir on ``(host, port)`` with its data under ``data_dir``.

    ``port=None`` picks a free port. ``bearer_tokens`` (static tokens) and ``smart_clients`` (SMART
    Backend Services clients: ``{"client_id", "jwks", "scopes"}``, tokens from ``/auth/token``) switch
    the server from open access to checking the client's ``Authorization`` header. Use as a context
    manager, or call ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        bearer_tokens: tuple[str, ...] = (),
        smart_clients: tuple[dict[str, Any], ...] = (),
        token_lifetime_s: int = 3600,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self._auto_port = port is None
        self.port = port if port is not None else free_port(host)
        self.bearer_tokens = bearer_tokens
        self.smart_clients = smart_clients
        self.token_lifetime_s = token_lifetime_s
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """FHIR base, e.g. ``http://127.0.0.1:41234/fhir``."""
        return f"http://{self.host}:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        """sekmet-fhir's SMART token endpoint (used when ``smart_clients`` are registered)."""
        return f"http://{self.host}:{self.port}/auth/token"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_settings(self) -> Path:
        types = [*(["bearer"] if self.bearer_tokens else []), *(["smart"] if self.smart_clients else [])]
        auth: dict[str, object] = {
            "types": types or ["none"],
            "tokens": list(self.bearer_tokens),
            "smart_clients": list(self.smart_clients),
            "token_lifetime": self.token_lifetime_s,
        }
        settings = {
            "base_url": self.base_url,
            "host": self.host,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "own_private_key_path": str(self.data_dir / "keys" / "sekmet_private.pem"),
            "server_auth": auth,
            "simulator": {"enabled": False},
            "log_inbound": False,
        }
        path = self.data_dir / "settings.yaml"
        path.write_text(json.dumps(settings, indent=2))  # JSON is valid YAML
        return path

    def start(self) -> None:
        """Start the child and return once ``GET /metadata`` answers 200.

        With an automatically chosen port, a child that exits at once (the port was taken between
        ``free_port`` and its bind) is retried on a fresh port, twice. Raises ``FhirUnavailable`` with
        the tail of the server log if it still exits, or does not answer within ``startup_timeout_s``.
        """
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            if attempt:
                self.port = free_port(self.host)
            returncode = self._spawn_and_wait()
            if returncode is None:
                return
        raise FhirUnavailable(f"sekmet-fhir exited with {returncode}: {self._log_tail()}")

    def _spawn_and_wait(self) -> int | None:
        """None once the server answers; the child's exit status if it died first."""
        settings_path = self._write_settings()
        env = {**os.environ, "SEKMET_CONFIG": str(settings_path)}
        self._log = self.log_path.open("ab")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "sekmet.main:app_factory",
                "--factory",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._process = process
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                self._close_log()
                return process.returncode
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=1.0).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise FhirUnavailable(
            f"sekmet-fhir did not answer /metadata in {self.startup_timeout_s} s: {self._log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s); idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def __enter__(self) -> LocalFhirServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

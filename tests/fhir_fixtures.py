"""Pytest fixtures for a real FHIR server (sekmet-fhir as a child process) and a client on it.

``tests/conftest.py`` imports them, so every test module can ask for them. Should a module import them
again, pytest would hold one session fixture per importing module; the server is therefore a
process-wide singleton: the first fixture instance starts it and stops it at session end, the others
reuse it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.fhir.client import FhirClient
from integrations.fhir.server import LocalFhirServer

_shared: list[LocalFhirServer] = []


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFhirServer]:
    """One sekmet-fhir on a free localhost port, its SQLite file in a session temp directory."""
    if _shared and _shared[0].running:
        yield _shared[0]
        return
    with LocalFhirServer(tmp_path_factory.mktemp("fhir-server")) as server:
        _shared[:] = [server]
        yield server
    _shared.clear()


@pytest.fixture
def fhir_client(fhir_server: LocalFhirServer) -> Iterator[FhirClient]:
    """A client on the session server; tests use unique ids, the server is shared."""
    with FhirClient(fhir_server.base_url, timeout_s=10.0) as client:
        yield client

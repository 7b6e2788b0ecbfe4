"""What a worker process holds across tasks: database, ledger, FHIR and the loaded model.

The composition root (`cds/cli.py`) installs a factory before the worker starts; the runtime is built on
first use inside the worker process (after any fork), and the model is loaded once and kept, so a GPU worker
never reloads weights between studies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger
from integrations.dicom.config import SrDestination
from integrations.dicom.spool import Spool
from integrations.dicom.spool_key import load_spool_key
from integrations.fhir.config import FhirConfig
from model.config import ModelConfig

if TYPE_CHECKING:
    from model.runtime import LoadedVlm


@dataclass
class WorkerRuntime:
    session_factory: sessionmaker[Session]
    ledger: Ledger
    fhir: FhirConfig
    model: ModelConfig
    spool_dir: Path
    enqueue_writeback: Callable[[str], None] | None = None
    # Draft SRs back to the PACS (None: SR export is off).
    enqueue_sr_export: Callable[[str], None] | None = None
    sr_destination: SrDestination | None = None
    dicom_ae_title: str = "VERITRACE"
    # HPO terms and the rare-disease ranker for the agent (the ontology costs ~25 s CPU to load once).
    knowledge_tools: bool = True
    # Seconds between worker heartbeats in the database (integrations.ops.health).
    heartbeat_interval_s: float = 10.0
    # The spool's key file when files are encrypted at rest (None: plaintext spool).
    spool_key_file: Path | None = None
    _vlm: LoadedVlm | None = field(default=None, repr=False)
    _vlm_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _spool: Spool | None = field(default=None, repr=False)
    _spool_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def engine(self) -> Engine:
        """The engine behind the session factory: claims and ops records need plain connections."""
        bind = self.session_factory.kw.get("bind")
        if not isinstance(bind, Engine):
            raise TypeError("the worker's session factory must be bound to an Engine")
        return bind

    def spool(self) -> Spool:
        """The spool every reader opens files through (sealed files need the key); built on first use."""
        with self._spool_lock:
            if self._spool is None:
                key = load_spool_key(self.spool_key_file) if self.spool_key_file is not None else None
                self._spool = Spool(self.spool_dir, key=key, audit=self.ledger)
            return self._spool

    def vlm(self) -> LoadedVlm:
        with self._vlm_lock:
            if self._vlm is None:
                from model.runtime import load_vlm

                self._vlm = load_vlm(self.model)
            return self._vlm


_factory: Callable[[], WorkerRuntime] | None = None
_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def install_runtime_factory(factory: Callable[[], WorkerRuntime]) -> None:
    global _factory, _runtime
    with _runtime_lock:
        _factory, _runtime = factory, None


def get_runtime() -> WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            if _factory is None:
                raise RuntimeError("worker runtime not configured: start workers with `veritrace worker`")
            _runtime = _factory()
        return _runtime

"""The composition root: builds the process's objects from Settings and hands them down.

Nothing below `cds` reads the environment; every process kind (`serve`, `api`, `dicom`, `worker`, `demo`)
assembles the same few objects here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger
from cds.settings import Settings
from integrations.celery_app import SR_EXPORT_TASK, WRITEBACK_TASK, make_celery
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.migrate import upgrade_database
from integrations.tasks.enqueue import enqueue_analysis
from integrations.worker_runtime import WorkerRuntime, install_runtime_factory

log = logging.getLogger(__name__)


@dataclass
class Components:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.store_config())

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.engine, self.settings.ledger_config())

    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings.resolved_broker_url, self.settings.task_time_limits())

    def prepare_storage(self) -> None:
        """Create var/, migrate the database and make sure the ledger can sign checkpoints.

        A configured spool key must load here, at start: a worker must not find out at its first study.
        """
        self.settings.ensure_home()
        if self.settings.spool_key_file is not None:
            from integrations.dicom.spool_key import load_spool_key

            load_spool_key(self.settings.spool_key_file)
        upgrade_database(self.engine)
        from audit.keys import ensure_signing_key

        ensure_signing_key(self.settings.ledger_config())

    def enqueue_analysis(self, analysis_id: str) -> None:
        enqueue_analysis(self.celery, self.session_factory, analysis_id)

    def enqueue_writeback(self, report_id: str) -> None:
        self.celery.send_task(WRITEBACK_TASK, args=[report_id], queue="io", routing_key="io")

    def enqueue_sr_export(self, report_id: str) -> None:
        self.celery.send_task(SR_EXPORT_TASK, args=[report_id], queue="io", routing_key="io")

    def worker_runtime(self) -> WorkerRuntime:
        dicom = self.settings.dicom_config()
        return WorkerRuntime(
            session_factory=self.session_factory,
            ledger=self.ledger,
            fhir=self.settings.fhir_config(),
            model=self.settings.model_settings(),
            spool_dir=dicom.spool_dir,
            enqueue_writeback=self.enqueue_writeback,
            knowledge_tools=self.settings.agent_knowledge_tools,
            enqueue_sr_export=self.enqueue_sr_export,
            sr_destination=dicom.sr_destination,
            dicom_ae_title=dicom.ae_title,
            spool_key_file=dicom.spool_key_file,
        )

    def install_worker_runtime(self) -> None:
        install_runtime_factory(self.worker_runtime)

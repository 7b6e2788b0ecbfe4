"""Publishing an analysis: inside the trace of the request that stored its study, when there was one.

The `dicom` process queues the analysis of a study stored by STOW-RS in an `api` process; the study row
carries that request's `traceparent` (`integrations.trace_parent`), so the publish span, and through the
message headers the worker's task span, join the request's trace instead of starting a new one.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from integrations.celery_app import ANALYSE_TASK, GPU_QUEUE
from integrations.store.models import Analysis, Study
from integrations.trace_parent import continued_trace

log = logging.getLogger(__name__)


def study_traceparent(session_factory: sessionmaker[Session], analysis_id: str) -> str | None:
    """The traceparent stored with the analysed study; None if there is none or the database is down."""
    try:
        with session_factory() as session:
            return session.scalar(
                select(Study.traceparent)
                .join(Analysis, Analysis.study_id == Study.id)
                .where(Analysis.id == analysis_id)
            )
    except SQLAlchemyError as exc:
        # Tracing must never stop an analysis from being queued.
        log.warning("no trace context for analysis %s (%s)", analysis_id, type(exc).__name__)
        return None


def enqueue_analysis(app: Celery, session_factory: sessionmaker[Session], analysis_id: str) -> None:
    with continued_trace(study_traceparent(session_factory, analysis_id)):
        app.send_task(ANALYSE_TASK, args=[analysis_id], queue=GPU_QUEUE, routing_key=GPU_QUEUE)

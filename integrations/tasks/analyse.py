"""Celery tasks. They take ids and re-fetch inside; the logic lives in integrations.analysis and model."""

from __future__ import annotations

from celery import shared_task
from celery.app.task import Task

from integrations.analysis.pipeline import mark_failed, run_analysis
from integrations.analysis.writeback import write_back_report
from integrations.celery_app import ANALYSE_TASK, WRITEBACK_TASK
from integrations.fhir.errors import FhirUnavailable
from integrations.worker_runtime import get_runtime


@shared_task(name=ANALYSE_TASK, bind=True, acks_late=True, max_retries=5)
def analyse_study(self: Task, analysis_id: str) -> str | None:  # type: ignore[type-arg]
    """Idempotent on analysis_id: a redelivery of a completed analysis is a no-op."""
    runtime = get_runtime()
    try:
        return run_analysis(runtime, analysis_id)
    except FhirUnavailable as exc:
        # The record is needed to draft; try again later rather than draft without it.
        if self.request.retries >= (self.max_retries or 0):
            mark_failed(runtime, analysis_id, f"FHIR unavailable: {exc}")
            return None
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc
    except Exception as exc:
        # Not retryable: record why (the exception type and message carry no patient data by
        # construction of our own errors) so the study shows as failed instead of running forever.
        mark_failed(runtime, analysis_id, f"{type(exc).__name__}: {exc}")
        raise


@shared_task(name=WRITEBACK_TASK, bind=True, acks_late=True, max_retries=8)
def writeback_report(self: Task, report_id: str) -> str | None:  # type: ignore[type-arg]
    """Idempotent: the DiagnosticReport carries the analysis id as identifier (conditional create)."""
    runtime = get_runtime()
    try:
        return write_back_report(runtime, report_id)
    except FhirUnavailable as exc:
        runtime.ledger.append("fhir.write.deferred", "veritrace-worker", {"report_id": report_id})
        raise self.retry(exc=exc, countdown=min(600, 5 * 2**self.request.retries)) from exc

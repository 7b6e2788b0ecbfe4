"""Celery tasks. They take ids and re-fetch inside; the logic lives in integrations.analysis and model.

Delivery rules, the same for both tasks:
- idempotency key `analysis:<id>` / `writeback:<id>`, claimed exclusively while the task runs; a duplicate
  delivery that finds the key held is acked and dropped (the holder's own message is still unacked, so if
  the holder dies the broker redelivers that one);
- transient failures (FHIR unavailable, database connection lost) retry with exponential backoff and jitter;
- anything else, or retries exhausted, gives up: a dead-letter record in the database, a ledger entry, and a
  reject without requeue, which RabbitMQ routes to `<queue>.dead`;
- a study whose analysis keeps dying mid-run (the worker killed or hung: `attempts` grows with no outcome) is
  given up after `MAX_ANALYSIS_STARTS`, so one poison study cannot crash-loop a GPU node;
- a task past its soft time limit gets `SoftTimeLimitExceeded` and gives up like any other failure; one that
  does not return even then (stuck in native code) is killed with its pool child at the hard limit, and the
  worker's parent process records that give-up instead (`record_hard_time_limit`). Limits: make_celery.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, NoReturn

from celery import shared_task, signals
from celery.app.task import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from integrations.analysis.pipeline import mark_failed, run_analysis
from integrations.analysis.writeback import write_back_report
from integrations.celery_app import (
    ANALYSE_TASK,
    GPU_QUEUE,
    IO_QUEUE,
    SR_EXPORT_TASK,
    WRITEBACK_TASK,
)
from integrations.dicom.sr_dispatch import DispatchState, export_draft_sr
from integrations.fhir.errors import FhirError, FhirUnavailable
from integrations.ops.dead_letters import record_dead_letter
from integrations.store.models import Analysis
from integrations.tasks import trace_context, worker_signals  # noqa: F401  (signal handlers)
from integrations.tasks.claims import exclusive_claim
from integrations.worker_runtime import WorkerRuntime, get_runtime

log = logging.getLogger(__name__)
ACTOR = "veritrace-worker"
MAX_ANALYSIS_STARTS = 8
ANALYSE_MAX_RETRIES = 5
WRITEBACK_MAX_RETRIES = 8
BACKOFF_BASE_S = 5.0
ANALYSE_BACKOFF_CAP_S = 300.0
WRITEBACK_BACKOFF_CAP_S = 600.0
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (FhirUnavailable, OperationalError)
_hard_limit_recorded: set[str] = set()
_hard_limit_lock = threading.Lock()


def backoff_delay(retries: int, *, base_s: float = BACKOFF_BASE_S, cap_s: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of min(cap, base * 2**retries)."""
    ceiling = min(cap_s, base_s * 2**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def describe_failure(exc: BaseException) -> str:
    """A reason safe for logs, the ledger and the dead-letter table.

    Our FHIR errors are PHI-free by construction (they name interaction, type and status); any other
    message may quote data (a database error quotes its parameters), so only its type is kept.
    """
    if isinstance(exc, FhirError):
        return f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, SoftTimeLimitExceeded):
        return "SoftTimeLimitExceeded: the task ran past its time limit and was interrupted"
    return type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def give_up(task: Task, runtime: WorkerRuntime, reason: str, args: list[Any]) -> NoReturn:
    """Record the dead letter (database + ledger), then reject without requeue (RabbitMQ: to `.dead`)."""
    request = task.request
    queue = (request.delivery_info or {}).get("routing_key") or _default_queue(str(task.name))
    record_give_up(
        runtime,
        task_name=str(task.name),
        task_id=str(request.id),
        queue=str(queue),
        args=args,
        reason=reason,
        attempts=int(request.retries or 0) + 1,
    )
    raise Reject(reason, requeue=False)


def _default_queue(task_name: str) -> str:
    return GPU_QUEUE if task_name == ANALYSE_TASK else IO_QUEUE


def record_give_up(
    runtime: WorkerRuntime,
    *,
    task_name: str,
    task_id: str,
    queue: str,
    args: list[Any],
    reason: str,
    attempts: int,
) -> None:
    """The dead-letter record and its ledger entry; a database outage is logged, never raised."""
    try:
        record = record_dead_letter(
            runtime.engine,
            task_name=task_name,
            task_id=task_id,
            queue=queue,
            args=args,
            reason=reason,
            attempts=attempts,
        )
        runtime.ledger.append(
            "task.dead_lettered",
            ACTOR,
            {
                "task": task_name,
                "task_id": task_id,
                "args": args,
                "queue": queue,
                "reason": reason,
                "dead_letter_id": record.id,
            },
        )
    except SQLAlchemyError as exc:
        # The database is what failed; the broker's dead-letter queue still keeps the message.
        log.error("could not record dead letter for task %s (%s)", task_id, type(exc).__name__)
    log.warning("task %s %s gave up: %s", task_name, task_id, reason)


@signals.task_failure.connect(weak=False)
def record_hard_time_limit(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **_: Any,
) -> None:
    """In the worker's parent process: a task whose pool child was killed at the hard time limit.

    The child could not record anything, and Celery has acked the message (a redelivery would only hang
    again), so the analysis is marked failed and the task dead-lettered here; `veritrace tasks requeue`
    sends it again once the cause is fixed.
    """
    if not isinstance(exception, TimeLimitExceeded) or task_id is None or sender is None:
        return
    with _hard_limit_lock:
        if task_id in _hard_limit_recorded:
            return  # Celery reports a hard time limit twice (the pool's result and the timeout handler)
        _hard_limit_recorded.add(task_id)
    task_name = str(getattr(sender, "name", sender))
    ids = [str(arg) for arg in (args or [])]
    limit = getattr(sender, "time_limit", None)
    reason = f"TimeLimitExceeded: killed at the hard time limit ({limit} s)" if limit else "TimeLimitExceeded"
    runtime = get_runtime()
    attempts = 1
    if task_name == ANALYSE_TASK and ids:
        try:
            attempts = max(1, _analysis_starts(runtime, ids[0])[1])
            mark_failed(runtime, ids[0], reason)
        except SQLAlchemyError:
            log.error("could not mark analysis %s failed (database unavailable)", ids[0])
    record_give_up(
        runtime,
        task_name=task_name,
        task_id=task_id,
        queue=_default_queue(task_name),
        args=ids,
        reason=reason,
        attempts=attempts,
    )


def _analysis_starts(runtime: WorkerRuntime, analysis_id: str) -> tuple[str | None, int]:
    with runtime.session_factory() as session:
        analysis = session.get(Analysis, analysis_id)
        return (analysis.status, analysis.attempts) if analysis is not None else (None, 0)


@shared_task(
    name=ANALYSE_TASK,
    bind=True,
    acks_late=True,
    max_retries=ANALYSE_MAX_RETRIES,
)
def analyse_study(self: Task, analysis_id: str) -> str | None:
    """Idempotent on analysis_id: a redelivery of a completed analysis is a no-op."""
    runtime = get_runtime()
    with exclusive_claim(runtime.engine, f"analysis:{analysis_id}") as held:
        if not held:
            log.info("analysis %s is running in another worker; dropping this duplicate", analysis_id)
            return None
        status, starts = _analysis_starts(runtime, analysis_id)
        if status == "running" and starts >= MAX_ANALYSIS_STARTS:
            reason = f"analysis started {starts} times without finishing"
            mark_failed(runtime, analysis_id, reason)
            give_up(self, runtime, reason, [analysis_id])
        try:
            return run_analysis(runtime, analysis_id)
        except Exception as exc:
            reason = describe_failure(exc)
            if _is_transient(exc) and self.request.retries < (self.max_retries or 0):
                # The record is needed to draft: try again later rather than draft without it.
                delay = backoff_delay(self.request.retries, cap_s=ANALYSE_BACKOFF_CAP_S)
                raise self.retry(exc=exc, countdown=delay) from exc
            try:
                mark_failed(runtime, analysis_id, reason)
            except SQLAlchemyError:
                log.error("could not mark analysis %s failed (database unavailable)", analysis_id)
            give_up(self, runtime, reason, [analysis_id])


@shared_task(
    name=WRITEBACK_TASK,
    bind=True,
    acks_late=True,
    max_retries=WRITEBACK_MAX_RETRIES,
)
def writeback_report(self: Task, report_id: str) -> str | None:
    """Idempotent: the DiagnosticReport carries the analysis id as identifier (conditional create)."""
    runtime = get_runtime()
    with exclusive_claim(runtime.engine, f"writeback:{report_id}") as held:
        if not held:
            log.info(
                "write-back of report %s is running in another worker; dropping this duplicate", report_id
            )
            return None
        try:
            return write_back_report(runtime, report_id)
        except Exception as exc:
            reason = describe_failure(exc)
            if _is_transient(exc) and self.request.retries < (self.max_retries or 0):
                delay = backoff_delay(self.request.retries, cap_s=WRITEBACK_BACKOFF_CAP_S)
                if isinstance(exc, FhirUnavailable):
                    runtime.ledger.append(
                        "fhir.write.deferred",
                        ACTOR,
                        {
                            "report_id": report_id,
                            "attempt": int(self.request.retries) + 1,
                            "retry_in_s": round(delay, 1),
                            "reason": reason,
                        },
                    )
                raise self.retry(exc=exc, countdown=delay) from exc
            give_up(self, runtime, reason, [report_id])


@shared_task(
    name=SR_EXPORT_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,
)
def export_sr(self: Task, report_id: str) -> str | None:
    """The draft as a DICOM SR back to the PACS. The exporter's own attempt cap and backoff decide when to
    stop (a permanent failure is audited there), so Celery only carries the waits between attempts."""
    runtime = get_runtime()
    with exclusive_claim(runtime.engine, f"sr-export:{report_id}") as held:
        if not held:
            return None
        try:
            result = export_draft_sr(runtime, report_id)
        except SoftTimeLimitExceeded as exc:
            give_up(self, runtime, describe_failure(exc), [report_id])
        if result.state is DispatchState.PENDING:
            raise self.retry(countdown=result.retry_in_s or BACKOFF_BASE_S)
        return result.state.value

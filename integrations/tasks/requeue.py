"""Operator requeue of a dead-lettered task: reset what the task's own guards would refuse, send, audit."""

from __future__ import annotations

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger
from integrations.celery_app import ANALYSE_TASK
from integrations.ops.dead_letters import DeadLetter, requeue_dead_letter
from integrations.store.models import Analysis


def requeue_task(
    *,
    app: Celery,
    session_factory: sessionmaker[Session],
    ledger: Ledger,
    dead_letter_id: str,
    operator: str,
) -> DeadLetter:
    """Requeue one dead letter (id or unique prefix) and record who did it in the ledger.

    An analysis goes back to "queued" with its start count reset, so the crash-loop guard gives it a full
    set of attempts again; a completed analysis is left alone (the task is then a no-op).
    """

    def prepare(record: DeadLetter) -> None:
        if record.task_name == ANALYSE_TASK and record.args:
            with session_factory() as session, session.begin():
                session.execute(
                    update(Analysis)
                    .where(Analysis.id == str(record.args[0]), Analysis.status != "completed")
                    .values(status="queued", attempts=0, error=None)
                )

    bind = session_factory.kw["bind"]
    requeued = requeue_dead_letter(bind, app, dead_letter_id, prepare=prepare)
    ledger.append(
        "task.requeued",
        f"operator:{operator}",
        {
            "dead_letter_id": requeued.id,
            "task": requeued.task_name,
            "args": requeued.args,
            "queue": requeued.queue,
            "new_task_id": requeued.requeued_task_id,
        },
    )
    return requeued

"""Dead letters: tasks that gave up, recorded in the database and (on RabbitMQ) parked in `<queue>.dead`.

The database record is what an operator lists and requeues on every deployment: the embedded SQLite broker
has no dead-letter exchange, and even on RabbitMQ the broker copy only says "rejected", not why. The broker
copy is still worth reading: a message dead-lettered by the broker itself (expired, over a length limit) has
no record, so `peek_broker_dead_letters` shows those too. Requeue is at most once per record: the UPDATE
that marks it requeued only succeeds for one caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from celery import Celery
from pydantic import BaseModel
from sqlalchemy import Engine

from integrations.celery_app import DEAD_LETTER_EXCHANGE, dead_letter_queues, is_amqp_broker
from integrations.ops.tables import dead_letters, ensure_ops_tables


class DeadLetterNotFound(LookupError):
    """No dead-letter record has this id (or id prefix), or the prefix is ambiguous."""


class AlreadyRequeued(RuntimeError):
    """The record was requeued before (by this operator or another); requeue is once per record."""


class DeadLetter(BaseModel):
    id: str
    task_name: str
    task_id: str
    queue: str
    args: list[Any]
    reason: str
    attempts: int
    failed_at: datetime
    requeued_at: datetime | None = None
    requeued_task_id: str | None = None


class BrokerDeadLetter(BaseModel):
    """One message sitting in a RabbitMQ dead-letter queue."""

    dead_queue: str
    original_queue: str | None
    death_reason: str | None
    task_name: str | None
    task_id: str | None
    args: list[Any]


def _row_to_model(row: sa.Row[Any]) -> DeadLetter:
    values = dict(row._mapping)
    for key in ("failed_at", "requeued_at"):
        moment = values.get(key)
        if isinstance(moment, datetime) and moment.tzinfo is None:  # SQLite returns naive UTC
            values[key] = moment.replace(tzinfo=UTC)
    return DeadLetter.model_validate(values)


def record_dead_letter(
    engine: Engine,
    *,
    task_name: str,
    task_id: str,
    queue: str,
    args: Sequence[Any],
    reason: str,
    attempts: int,
    now: datetime | None = None,
) -> DeadLetter:
    """Store why a task gave up. `reason` must be free of patient data (an error type, a status)."""
    ensure_ops_tables(engine)
    record = DeadLetter(
        id=str(uuid.uuid4()),
        task_name=task_name,
        task_id=task_id,
        queue=queue,
        args=list(args),
        reason=reason[:2000],
        attempts=attempts,
        failed_at=now or datetime.now(UTC),
    )
    with engine.begin() as connection:
        connection.execute(dead_letters.insert().values(**record.model_dump()))
    return record


def list_dead_letters(engine: Engine, *, include_requeued: bool = False) -> list[DeadLetter]:
    """Oldest first, so the first failure of an incident is at the top."""
    ensure_ops_tables(engine)
    query = sa.select(dead_letters).order_by(dead_letters.c.failed_at, dead_letters.c.id)
    if not include_requeued:
        query = query.where(dead_letters.c.requeued_at.is_(None))
    with engine.connect() as connection:
        return [_row_to_model(row) for row in connection.execute(query)]


def get_dead_letter(engine: Engine, id_or_prefix: str) -> DeadLetter:
    """Requires a full id or a unique prefix of at least 6 characters (what the list command prints)."""
    if len(id_or_prefix) < 6:
        raise DeadLetterNotFound(f"dead-letter id prefix must be at least 6 characters, got {id_or_prefix!r}")
    ensure_ops_tables(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(dead_letters).where(dead_letters.c.id.startswith(id_or_prefix, autoescape=True))
        ).all()
    if len(rows) != 1:
        found = "no" if not rows else f"{len(rows)}"
        raise DeadLetterNotFound(f"{found} dead letters match {id_or_prefix!r}")
    return _row_to_model(rows[0])


def requeue_dead_letter(
    engine: Engine,
    app: Celery,
    id_or_prefix: str,
    *,
    prepare: Callable[[DeadLetter], None] | None = None,
    now: datetime | None = None,
) -> DeadLetter:
    """Send the task again with its original arguments to its original queue; returns the updated record.

    `prepare` runs after the record is claimed and before the send (e.g. set the analysis back to
    "queued"). The broker's copy in `<queue>.dead`, if any, is removed so it is not requeued twice.
    """
    record = get_dead_letter(engine, id_or_prefix)
    new_task_id = str(uuid.uuid4())
    moment = now or datetime.now(UTC)
    with engine.begin() as connection:
        claimed = connection.execute(
            dead_letters.update()
            .where(dead_letters.c.id == record.id, dead_letters.c.requeued_at.is_(None))
            .values(requeued_at=moment, requeued_task_id=new_task_id)
        ).rowcount
    if claimed != 1:
        raise AlreadyRequeued(f"dead letter {record.id} was already requeued")
    if prepare is not None:
        prepare(record)
    app.send_task(
        record.task_name,
        args=record.args,
        task_id=new_task_id,
        queue=record.queue,
        routing_key=record.queue,
    )
    drop_broker_dead_letters(app, record.task_id)
    return record.model_copy(update={"requeued_at": moment, "requeued_task_id": new_task_id})


def _read_dead_queue(
    app: Celery, visit: Callable[[BrokerDeadLetter, Any], bool], limit: int
) -> list[BrokerDeadLetter]:
    """Get up to `limit` messages per dead queue without auto-ack; `visit` returns True to ack (remove).

    Messages not acked go back to their queue when the channel closes (RabbitMQ requeues unacked
    deliveries), which is what makes this a peek.
    """
    if not is_amqp_broker(str(app.conf.broker_url)):
        return []
    seen: list[BrokerDeadLetter] = []
    with app.connection_for_write() as connection:
        channel = connection.channel()
        try:
            for queue in dead_letter_queues():
                bound = queue.bind(channel)
                bound.declare()
                for _ in range(limit):
                    message = bound.get(no_ack=False, accept=["json"])
                    if message is None:
                        break
                    letter = _describe(queue.name, message)
                    seen.append(letter)
                    if visit(letter, message):
                        message.ack()
        finally:
            channel.close()
    return seen


def _describe(dead_queue: str, message: Any) -> BrokerDeadLetter:
    headers = message.headers or {}
    deaths = headers.get("x-death") or []
    first_death = deaths[0] if deaths else {}
    try:
        body = message.decode()
    except Exception:  # an undecodable body is still listed, without arguments
        body = None
    args = list(body[0]) if isinstance(body, list) and body and isinstance(body[0], list) else []
    return BrokerDeadLetter(
        dead_queue=dead_queue,
        original_queue=first_death.get("queue"),
        death_reason=first_death.get("reason"),
        task_name=headers.get("task"),
        task_id=headers.get("id"),
        args=args,
    )


def peek_broker_dead_letters(app: Celery, *, limit: int = 100) -> list[BrokerDeadLetter]:
    """What RabbitMQ holds in the dead-letter queues (nothing is removed). Empty on other brokers."""
    return _read_dead_queue(app, lambda _letter, _message: False, limit)


def drop_broker_dead_letters(app: Celery, task_id: str, *, limit: int = 10_000) -> int:
    """Remove the broker's dead copies of one task id; returns how many were removed."""
    dropped = _read_dead_queue(app, lambda letter, _message: letter.task_id == task_id, limit)
    return sum(1 for letter in dropped if letter.task_id == task_id)


__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "AlreadyRequeued",
    "BrokerDeadLetter",
    "DeadLetter",
    "DeadLetterNotFound",
    "drop_broker_dead_letters",
    "get_dead_letter",
    "list_dead_letters",
    "peek_broker_dead_letters",
    "record_dead_letter",
    "requeue_dead_letter",
]

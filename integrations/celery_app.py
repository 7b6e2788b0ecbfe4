"""The Celery application: queues, routing and delivery guarantees.

Analyses run on queue `gpu` (one worker per GPU node, prefetch 1 so a long study does not hold others
hostage); write-back, export and checkpoint work on `io`. Tasks are idempotent, so messages are acked late and
redelivered when a worker dies mid-task.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

GPU_QUEUE = "gpu"
IO_QUEUE = "io"
ANALYSE_TASK = "veritrace.analyse_study"
WRITEBACK_TASK = "veritrace.writeback_report"


def make_celery(broker_url: str) -> Celery:
    app = Celery("veritrace", broker=broker_url, include=["integrations.tasks.analyse"])
    app.conf.update(
        task_queues=[
            Queue(GPU_QUEUE, Exchange(GPU_QUEUE, type="direct"), routing_key=GPU_QUEUE, durable=True),
            Queue(IO_QUEUE, Exchange(IO_QUEUE, type="direct"), routing_key=IO_QUEUE, durable=True),
        ],
        task_default_exchange=IO_QUEUE,
        task_default_routing_key=IO_QUEUE,
        task_default_queue=IO_QUEUE,
        task_routes={
            ANALYSE_TASK: {"queue": GPU_QUEUE, "routing_key": GPU_QUEUE},
            WRITEBACK_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app

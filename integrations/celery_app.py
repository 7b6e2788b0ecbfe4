"""The Celery application: queues, routing and delivery guarantees.

Analyses run on queue `gpu` (one worker per GPU node, prefetch 1 so a long study does not hold others
hostage); write-back, export and checkpoint work on `io`. Tasks are idempotent, so messages are acked late and
redelivered when a worker dies mid-task. Workers run Celery's prefork pool: a task runs in a pool child that
lives across tasks (a `gpu` child loads the model once, when it starts), and the parent can interrupt it at
its soft time limit and kill and replace the child at the hard one, which a thread pool cannot do.

On RabbitMQ the queues are durable, publishes wait for the broker's confirm (so `send_task` returning means
the message is on disk, not in a socket buffer), and each work queue dead-letters into `<queue>.dead` through
the `veritrace.dead` exchange: a task that gives up rejects its message without requeue and the broker moves
it there, with an `x-death` header saying where it came from. The embedded SQLite broker has no dead-letter
exchange; there the failure record in the database (`integrations.ops.dead_letters`) is the dead-letter path,
and it is written on RabbitMQ too, so `veritrace tasks dead-letters` reads one place on every deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

GPU_QUEUE = "gpu"
IO_QUEUE = "io"
WORK_QUEUES = (GPU_QUEUE, IO_QUEUE)
ANALYSE_TASK = "veritrace.analyse_study"
WRITEBACK_TASK = "veritrace.writeback_report"
SR_EXPORT_TASK = "veritrace.export_sr"
DEAD_LETTER_EXCHANGE = "veritrace.dead"

# RabbitMQ closes a channel whose delivery stays unacked longer than its consumer_timeout (30 min by
# default), so soft limit + kill grace stays below that. Workers run the prefork pool, where the limits are
# real: at the soft limit the task gets `SoftTimeLimitExceeded` (it then fails, audited and dead-lettered);
# `kill_grace_s` later the pool kills the child process outright and starts a fresh one.
DEFAULT_ANALYSIS_TIME_LIMIT_S = 24 * 60
DEFAULT_WRITEBACK_TIME_LIMIT_S = 4 * 60 + 30
DEFAULT_KILL_GRACE_S = 60
# A pool child of a `gpu` worker loads the model before it reports up; the pool's default wait (4 s) would
# kill it mid-load.
CHILD_START_TIMEOUT_S = 15 * 60
# Publisher side: how hard `send_task` tries before raising (a RabbitMQ restart takes a few seconds).
PUBLISH_RETRY_POLICY = {"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3.0}


@dataclass(frozen=True)
class TaskTimeLimits:
    """Seconds a task may run (the soft limit), and how long after that its pool child is killed."""

    analysis_s: float = DEFAULT_ANALYSIS_TIME_LIMIT_S
    writeback_s: float = DEFAULT_WRITEBACK_TIME_LIMIT_S
    kill_grace_s: float = DEFAULT_KILL_GRACE_S

    def __post_init__(self) -> None:
        for name in ("analysis_s", "writeback_s", "kill_grace_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"TaskTimeLimits.{name} must be > 0, got {value}")

    def annotations(self) -> dict[str, dict[str, float]]:
        """Per-task `soft_time_limit` / `time_limit`, as Celery task annotations (the worker applies them)."""
        limits = {
            ANALYSE_TASK: self.analysis_s,
            WRITEBACK_TASK: self.writeback_s,
            SR_EXPORT_TASK: self.writeback_s,
        }
        return {
            name: {"soft_time_limit": soft, "time_limit": soft + self.kill_grace_s}
            for name, soft in limits.items()
        }


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


def is_amqp_broker(broker_url: str) -> bool:
    """RabbitMQ (py-amqp): the transports with dead-letter exchanges and publisher confirms."""
    return broker_url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


def work_queues(broker_url: str) -> list[Queue]:
    """The durable work queues; on RabbitMQ each names its dead-letter exchange and routing key."""
    queues: list[Queue] = []
    for name in WORK_QUEUES:
        arguments: dict[str, Any] | None = None
        if is_amqp_broker(broker_url):
            arguments = {
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": dead_letter_queue_name(name),
            }
        queues.append(
            Queue(
                name,
                Exchange(name, type="direct", durable=True),
                routing_key=name,
                durable=True,
                queue_arguments=arguments,
            )
        )
    return queues


def dead_letter_queues() -> list[Queue]:
    """`<queue>.dead`, bound to the dead-letter exchange; declared by whoever inspects or requeues."""
    dead_exchange = Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)
    return [
        Queue(
            dead_letter_queue_name(name),
            dead_exchange,
            routing_key=dead_letter_queue_name(name),
            durable=True,
        )
        for name in WORK_QUEUES
    ]


def declare_dead_letter_queues(app: Celery) -> None:
    """Create the dead-letter exchange and queues (idempotent). A message dead-lettered to an exchange
    with no bound queue is dropped by RabbitMQ, so workers call this before consuming."""
    if not is_amqp_broker(str(app.conf.broker_url)):
        return
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in dead_letter_queues():
            queue.bind(channel).declare()


def make_celery(broker_url: str, time_limits: TaskTimeLimits | None = None) -> Celery:
    # Publishers and workers alike carry the trace context in message headers.
    from integrations.tasks import trace_context  # noqa: F401  (connects signal handlers)

    app = Celery("veritrace", broker=broker_url, include=["integrations.tasks.analyse"])
    amqp = is_amqp_broker(broker_url)
    limits = time_limits or TaskTimeLimits()
    app.conf.update(
        task_queues=work_queues(broker_url),
        task_default_exchange=IO_QUEUE,
        task_default_routing_key=IO_QUEUE,
        task_default_queue=IO_QUEUE,
        task_routes={
            ANALYSE_TASK: {"queue": GPU_QUEUE, "routing_key": GPU_QUEUE},
            WRITEBACK_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
            SR_EXPORT_TASK: {"queue": IO_QUEUE, "routing_key": IO_QUEUE},
        },
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that raised is acked (its failure is recorded by us); giving up is an explicit Reject.
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_annotations=limits.annotations(),
        # Any other task: the analysis limits, the longest we allow.
        task_soft_time_limit=limits.analysis_s,
        task_time_limit=limits.analysis_s + limits.kill_grace_s,
        worker_proc_alive_timeout=CHILD_START_TIMEOUT_S,
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=30 if amqp else 0,
        broker_transport_options={"confirm_publish": True} if amqp else {},
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app

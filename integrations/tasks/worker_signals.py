"""Worker lifecycle hooks: declare the dead-letter queues and keep a heartbeat while the worker runs.

Connected when `integrations.tasks.analyse` is imported, which every worker does (the app `include`s it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from integrations.celery_app import declare_dead_letter_queues
from integrations.ops.health import HeartbeatWriter
from integrations.worker_runtime import get_runtime

log = logging.getLogger(__name__)

_writer: HeartbeatWriter | None = None
_writer_lock = threading.Lock()


def current_heartbeat() -> HeartbeatWriter | None:
    return _writer


@signals.worker_ready.connect(weak=False)
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _writer
    app = sender.app
    declare_dead_letter_queues(app)
    queues = ",".join(sorted(app.amqp.queues.consume_from or app.amqp.queues))
    runtime = get_runtime()
    writer = HeartbeatWriter(
        runtime.engine, node_name=str(sender.hostname), queues=queues, interval_s=runtime.heartbeat_interval_s
    )
    writer.start()
    with _writer_lock:
        _writer = writer
    log.info("worker heartbeat started for %s", writer.worker)


@signals.worker_shutdown.connect(weak=False)
def on_worker_shutdown(**_: Any) -> None:
    global _writer
    with _writer_lock:
        writer, _writer = _writer, None
    if writer is not None:
        writer.stop()


@signals.task_prerun.connect(weak=False)
def on_task_start(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    writer = _writer
    if writer is not None and task_id is not None and task is not None:
        limit = task.time_limit or task.app.conf.task_time_limit
        writer.task_started(task_id, str(task.name), float(limit) if limit else None)


@signals.task_postrun.connect(weak=False)
def on_task_end(task_id: str | None = None, **_: Any) -> None:
    writer = _writer
    if writer is not None and task_id is not None:
        writer.task_finished(task_id)

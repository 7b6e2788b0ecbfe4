"""Worker lifecycle hooks: pool children ready their runtime, the parent declares the dead-letter queues and
keeps a heartbeat while the worker runs.

Connected when `integrations.tasks.analyse` is imported, which every worker does (the app `include`s it).
Tasks run in prefork pool children: each child builds its own database pool and, on a `gpu` worker, loads
the model before it reports up, then keeps it for every task it runs. A child killed at a hard time limit
is replaced by a fresh one that loads the model again. The parent never loads the model (a CUDA context
does not survive a fork) and sees the running tasks through the pool's bookkeeping.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app, signals
from celery.worker import state as worker_state

from integrations.celery_app import GPU_QUEUE, declare_dead_letter_queues
from integrations.ops.health import HeartbeatWriter
from integrations.worker_runtime import get_runtime

log = logging.getLogger(__name__)

_writer: HeartbeatWriter | None = None
_writer_lock = threading.Lock()


def current_heartbeat() -> HeartbeatWriter | None:
    return _writer


def consumed_queues(app: Celery) -> list[str]:
    return sorted(app.amqp.queues.consume_from or app.amqp.queues)


@signals.worker_init.connect(weak=False)
def on_worker_init(sender: Any = None, **_: Any) -> None:
    """In the parent, before the pool forks: import torch and transformers once (no device is touched), so
    every child, and every replacement of a killed one, starts with them imported and only loads weights."""
    if sender is not None and GPU_QUEUE in consumed_queues(sender.app):
        import model.runtime  # noqa: F401


@signals.worker_process_init.connect(weak=False)
def on_pool_child_start(**_: Any) -> None:
    """In a fresh pool child: drop the database connections inherited from the parent, load the model."""
    runtime = get_runtime()
    # The parent's pooled connections are its own; sharing a socket across processes corrupts both.
    runtime.engine.dispose(close=False)
    if GPU_QUEUE not in consumed_queues(current_app):
        return
    from model.cpu_threads import apply_cpu_threads

    threads = apply_cpu_threads(runtime.model.cpu_threads, int(current_app.conf.worker_concurrency or 1))
    try:
        identity = runtime.vlm().identity
    except Exception:
        # Every child would fail the same way: stop the whole worker (its supervisor restarts it and shows
        # why) rather than run analyses that can only fail.
        log.exception("the model could not be loaded; stopping the worker")
        os.kill(os.getppid(), signal.SIGTERM)
        raise
    log.info(
        "model loaded: %s (%s, %s, %d CPU threads)",
        identity.architecture,
        identity.dtype,
        identity.attention,
        threads,
    )


def running_tasks(app: Celery) -> list[dict[str, Any]]:
    """The tasks the pool children are running now, from the parent's own records (for the heartbeat)."""
    for _ in range(5):
        try:
            requests = list(worker_state.active_requests)
            break
        except RuntimeError:  # the set changed while the heartbeat thread copied it
            time.sleep(0.01)
    else:
        return []
    tasks = []
    for request in requests:
        if request.time_start is None:
            continue
        limit = request.task.time_limit or app.conf.task_time_limit
        tasks.append(
            {
                "task_id": str(request.id),
                "task_name": str(request.name),
                "started_at": datetime.fromtimestamp(request.time_start, UTC).isoformat(),
                "time_limit_s": float(limit) if limit else None,
            }
        )
    return tasks


@signals.worker_ready.connect(weak=False)
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _writer
    app = sender.app
    declare_dead_letter_queues(app)
    queues = ",".join(consumed_queues(app))
    runtime = get_runtime()
    writer = HeartbeatWriter(
        runtime.engine,
        node_name=str(sender.hostname),
        queues=queues,
        interval_s=runtime.heartbeat_interval_s,
        active_tasks=lambda: running_tasks(app),
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

"""How many CPU threads torch may use in one worker process.

torch's default is one intra-op thread per core. A prefork worker with `-c N` children would then run N
times the machine's cores, and a worker sharing its box with the api and dicom processes competes with
them: OpenMP threads that spin waiting for a descheduled peer make each step several times slower (on the
2-core CI box, a generate under two busy processes took 0.50 s with 2 threads against 0.27 s with 1).
The default splits the cores the process may run on among the pool's children; an operator co-locating
services sets the number explicitly.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers' cpusets narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads_for(configured: int | None, pool_children: int, cores: int) -> int:
    """The configured count, else the cores shared out among the pool's children (at least one)."""
    if configured is not None:
        return configured
    return max(1, cores // max(1, pool_children))


def apply_cpu_threads(configured: int | None, pool_children: int) -> int:
    """Set torch's intra-op threads for this process; returns the number set."""
    threads = cpu_threads_for(configured, pool_children, available_cores())
    torch.set_num_threads(threads)
    return threads

"""Operating the task system: dead letters (inspect, requeue), worker heartbeats and health, queue depth.

Its tables (`task_dead_letters`, `worker_heartbeats`) are created on first use by `ensure_ops_tables`, the
way the audit package owns its own tables: they are operational records, not part of the clinical index.
"""

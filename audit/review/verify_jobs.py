"""Verify-now: a full ledger verification run in the background, polled by the ledger page.

A run over a large log takes a while (seconds per million entries), so the request that starts it returns
a job id at once and the page polls for the stage and elapsed time. One run at a time per process: a
second request while one runs gets the running job back instead of doubling the database load.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Literal

from pydantic import BaseModel

from audit.ledger import Ledger
from audit.review.access_log import LEDGER_VERIFIED, record_event
from audit.review.reviewer import Reviewer


class VerifyJob(BaseModel):
    id: str
    stage: Literal["running", "done", "failed"]
    started_at: float
    finished_at: float | None = None
    entries_at_start: int
    entries_checked: int = 0
    """Entries re-hashed so far; with ``entries_at_start`` the page shows a percentage."""
    ok: bool | None = None
    size: int | None = None
    trusted_size: int | None = None
    trusted_source: str | None = None
    checkpoints_checked: int | None = None
    first_bad_index: int | None = None
    problem: str | None = None
    seconds: float | None = None
    ledger_entry: int | None = None
    """Index of the ``review.ledger_verified`` entry that records this run."""


class VerifyJobs:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._jobs: dict[str, VerifyJob] = {}
        self._lock = threading.Lock()

    def start(self, reviewer: Reviewer) -> VerifyJob:
        with self._lock:
            for job in self._jobs.values():
                if job.stage == "running":
                    return job.model_copy()
            job = VerifyJob(
                id=secrets.token_urlsafe(12),
                stage="running",
                started_at=time.time(),
                entries_at_start=self._ledger.size(),
            )
            self._jobs[job.id] = job
            while len(self._jobs) > 20:
                self._jobs.pop(next(iter(self._jobs)))
        threading.Thread(target=self._run, args=(job.id, reviewer), daemon=True).start()
        return job.model_copy()

    def get(self, job_id: str) -> VerifyJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy() if job else None

    def _advance(self, job_id: str, done: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs[job_id] = job.model_copy(update={"entries_checked": done})

    def _run(self, job_id: str, reviewer: Reviewer) -> None:
        try:
            report = self._ledger.verify(progress=lambda done: self._advance(job_id, done))
            entry = record_event(
                self._ledger,
                LEDGER_VERIFIED,
                reviewer,
                {
                    "ok": report.ok,
                    "size": report.size,
                    "trusted_size": report.trusted_size,
                    "first_bad_index": report.first_bad_index,
                },
            )
            update = {
                "stage": "done",
                "ok": report.ok,
                "size": report.size,
                "trusted_size": report.trusted_size,
                "trusted_source": report.trusted_source,
                "checkpoints_checked": report.checkpoints_checked,
                "first_bad_index": report.first_bad_index,
                "problem": report.problem,
                "seconds": report.seconds,
                "ledger_entry": entry,
            }
        except Exception as exc:  # a failed run must still end the job, or the page polls forever
            update = {"stage": "failed", "problem": f"verification could not run: {type(exc).__name__}"}
        with self._lock:
            job = self._jobs[job_id]
            self._jobs[job_id] = job.model_copy(update={**update, "finished_at": time.time()})

"""A task past its time limit: the worker ends it, records the failure, and serves the next task.

The worker is `veritrace worker -Q gpu,io` on the prefork pool, on PostgreSQL + RabbitMQ, with the limits
set through VERITRACE_ANALYSIS_TIME_LIMIT_S / VERITRACE_TASK_KILL_GRACE_S. Its launcher injects two faults
into the patient-context step of the analysis, chosen by the study's patient id:
- "slow" sleeps (interruptible): the soft limit raises in the task, which fails audited and dead-lettered,
  and the same pool child (model still loaded) goes on;
- "stuck" sleeps with the soft-limit signal blocked, like native code that never returns to Python: at the
  hard limit the pool kills the child, the parent records the failure, and a fresh child loads the model.
A third, ordinary study then completes with one report.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from cds.demo_study import build_demo_ct_study
from integrations.celery_app import ANALYSE_TASK
from integrations.ops.dead_letters import list_dead_letters
from integrations.store.models import Analysis, Study
from tests.fault.harness import Deployment, storescu, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

SOFT_LIMIT_S = 15
KILL_GRACE_S = 2
SLOW, STUCK, ORDINARY = "vt-limit-slow", "vt-limit-stuck", "vt-limit-ok"

FAULTY_WORKER = f"""
import signal, time
import integrations.analysis.pipeline as pipeline

real_read_context = pipeline.read_context_for_study


def read_context_with_faults(runtime, dicom_patient_id, study_uid):
    if dicom_patient_id == {SLOW!r}:
        time.sleep(3600)
    if dicom_patient_id == {STUCK!r}:
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})
        time.sleep(3600)
    return real_read_context(runtime, dicom_patient_id, study_uid)


pipeline.read_context_for_study = read_context_with_faults
from cds.cli import app

app(["worker", "-Q", "gpu,io"])
"""


def _analysis_of(deployment: Deployment, patient_id: str) -> Analysis | None:
    with deployment.session() as session:
        return session.scalar(
            select(Analysis).join(Study, Study.id == Analysis.study_id).where(Study.patient_id == patient_id)
        )


def _send_and_wait(deployment: Deployment, patient_id: str, status: str) -> Analysis:
    paths = build_demo_ct_study(deployment.home / "incoming" / patient_id, patient_id=patient_id, slices=2)
    sent = storescu(deployment.settings().dicom_port, paths)
    assert sent.returncode == 0, sent.stderr

    def settled() -> Analysis | None:
        analysis = _analysis_of(deployment, patient_id)
        return analysis if analysis is not None and analysis.status in ("failed", "completed") else None

    analysis = wait_until(settled, timeout_s=180, what=f"the analysis of {patient_id} to end")
    assert analysis.status == status, (analysis.status, analysis.error, deployment.log_tail("worker"))
    return analysis


def _spawn_faulty_worker(deployment: Deployment) -> None:
    log = (deployment.home / "logs" / "worker.log").open("ab")
    deployment.processes["worker"] = subprocess.Popen(
        [sys.executable, "-c", FAULTY_WORKER],
        env={**os.environ, **deployment.env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()


def test_tasks_past_their_time_limit_fail_audited_and_the_worker_goes_on(deployment: Deployment) -> None:
    deployment.env.update(
        {
            "VERITRACE_ANALYSIS_TIME_LIMIT_S": str(SOFT_LIMIT_S),
            "VERITRACE_TASK_KILL_GRACE_S": str(KILL_GRACE_S),
            "VERITRACE_AGENT_KNOWLEDGE_TOOLS": "false",
            "VERITRACE_MODEL_MAX_NEW_TOKENS": "8",
        }
    )
    deployment.spawn("dicom", "dicom")
    _spawn_faulty_worker(deployment)
    deployment.wait_dicom(deployment.settings().dicom_port)
    deployment.wait_log("worker", "model loaded")

    slow = _send_and_wait(deployment, SLOW, "failed")
    assert slow.error is not None and slow.error.startswith("SoftTimeLimitExceeded"), slow.error
    assert deployment.log_tail("worker", chars=200_000).count("model loaded") == 1  # same child goes on

    stuck = _send_and_wait(deployment, STUCK, "failed")
    assert stuck.error is not None and stuck.error.startswith("TimeLimitExceeded"), stuck.error
    # The killed child was replaced by a fresh one that loaded the model again.
    wait_until(
        lambda: deployment.log_tail("worker", chars=200_000).count("model loaded") == 2,
        timeout_s=120,
        what="a fresh pool child with the model loaded",
    )

    ordinary = _send_and_wait(deployment, ORDINARY, "completed")
    assert deployment.report_count(ordinary.id) == 1
    assert deployment.report_count() == 1

    # Each over-limit analysis ran once, failed once, and has exactly one dead letter saying why.
    assert (slow.attempts, stuck.attempts) == (1, 1)
    letters = {letter.args[0]: letter for letter in list_dead_letters(deployment.engine)}
    assert set(letters) == {slow.id, stuck.id}
    assert letters[slow.id].task_name == letters[stuck.id].task_name == ANALYSE_TASK
    assert letters[slow.id].reason.startswith("SoftTimeLimitExceeded")
    assert letters[stuck.id].reason.startswith("TimeLimitExceeded")
    kinds = deployment.ledger_kinds()
    assert kinds.count("analysis.failed") == 2
    assert kinds.count("task.dead_lettered") == 2
    assert kinds.count("analysis.completed") == 1
    assert deployment.ledger().verify().ok
    assert deployment.processes["worker"].poll() is None  # the worker itself never went down

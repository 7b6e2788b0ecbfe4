"""The dead-letter path end to end: a real worker gives up, an operator lists and requeues, it completes.

RabbitMQ (private vhost) + PostgreSQL + `python -m cds.cli worker`; the operator commands run through the
`veritrace tasks` Typer app the CLI mounts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cds.composition import Components
from cds.demo_study import build_demo_ct_study
from cds.ops_cli import build_tasks_cli
from integrations.celery_app import ANALYSE_TASK, GPU_QUEUE, make_celery
from integrations.ops.dead_letters import list_dead_letters, peek_broker_dead_letters
from integrations.ops.queue_depth import queue_depths
from integrations.store.models import Analysis, AnalysisInstance, Instance, Study
from integrations.tasks.analyse import MAX_ANALYSIS_STARTS
from tests.fault.harness import Deployment, study_uid_of, wait_until
from tests.fault.harness import deployment as deployment

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]
SPOOL_PATH = "objects/00/00/seeded.dcm"


def _seed_crash_looping_analysis(deployment: Deployment, source: Path) -> str:
    """An analysis that has already died mid-run as often as the guard allows (status still "running")."""
    spooled = deployment.settings().dicom_config().spool_dir / SPOOL_PATH
    spooled.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, spooled)
    with deployment.session() as session, session.begin():
        study = Study(
            study_uid=study_uid_of(source), patient_id="vt-ops-dl", state="stable", instance_count=1
        )
        session.add(study)
        session.flush()
        instance = Instance(
            study_id=study.id,
            series_uid="1.2.3.4",
            sop_instance_uid="1.2.3.4.5",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            spool_path=SPOOL_PATH,
            size_bytes=source.stat().st_size,
            sha256="0" * 64,
        )
        analysis = Analysis(
            study_id=study.id, content_digest="1" * 64, status="running", attempts=MAX_ANALYSIS_STARTS
        )
        session.add_all([instance, analysis])
        session.flush()
        session.add(AnalysisInstance(analysis_id=analysis.id, instance_id=instance.id))
        return analysis.id


def test_give_up_list_requeue_complete(deployment: Deployment) -> None:
    settings = deployment.settings()
    source = build_demo_ct_study(deployment.home / "incoming", patient_id="vt-ops-dl", slices=1)[0]
    analysis_id = _seed_crash_looping_analysis(deployment, source)
    deployment.spawn("worker", "worker", "-Q", "gpu,io")
    deployment.wait_log("worker", "ready.")
    app = make_celery(settings.resolved_broker_url)
    app.send_task(ANALYSE_TASK, args=[analysis_id], queue=GPU_QUEUE, routing_key=GPU_QUEUE)

    records = wait_until(lambda: list_dead_letters(deployment.engine), timeout_s=120, what="a dead letter")
    assert [(r.task_name, r.args, r.queue) for r in records] == [(ANALYSE_TASK, [analysis_id], GPU_QUEUE)]
    assert records[0].reason == f"analysis started {MAX_ANALYSIS_STARTS} times without finishing"
    broker = wait_until(lambda: peek_broker_dead_letters(app), timeout_s=30, what="the broker's copy")
    assert [(b.task_id, b.original_queue, b.death_reason) for b in broker] == [
        (records[0].task_id, GPU_QUEUE, "rejected")
    ]
    assert peek_broker_dead_letters(app) == broker  # peeking leaves it there
    assert queue_depths(app)["gpu.dead"] == 1
    with deployment.session() as session:
        assert session.get(Analysis, analysis_id).status == "failed"  # type: ignore[union-attr]

    cli = build_tasks_cli(lambda: Components(deployment.settings()))
    runner = CliRunner()
    listed = runner.invoke(cli, ["dead-letters", "--json"])
    assert listed.exit_code == 0, listed.output
    body = json.loads(listed.output)
    assert [d["id"] for d in body["dead_letters"]] == [records[0].id]
    assert body["broker_total"] == 1 and body["broker_only"] == []
    assert runner.invoke(cli, ["requeue", "abc"]).exit_code == 2  # prefix too short: bad input

    # The operator has dealt with the cause (say, a node that kept running out of memory) and requeues:
    # the start count is reset, so the guard gives it a full set of attempts again.
    requeued = runner.invoke(cli, ["requeue", records[0].id[:8], "--operator", "ops-test"])
    assert requeued.exit_code == 0, requeued.output
    wait_until(lambda: deployment.report_count(analysis_id) == 1, timeout_s=180, what="report after requeue")
    assert peek_broker_dead_letters(app) == []
    assert list_dead_letters(deployment.engine) == []
    assert runner.invoke(cli, ["requeue", records[0].id]).exit_code == 1  # once per record
    kinds = deployment.ledger_kinds()
    assert kinds.count("task.dead_lettered") == 1 and kinds.count("task.requeued") == 1
    requeue_entry = next(e for e in deployment.ledger().iter_entries() if e.kind == "task.requeued")
    assert requeue_entry.actor == "operator:ops-test"

    healthy = runner.invoke(cli, ["health", "--queue", "gpu"])
    assert healthy.exit_code == 0, healthy.output
    deployment.stop("worker")
    stopped = runner.invoke(cli, ["health", "--queue", "gpu"])
    assert stopped.exit_code == 1 and "no running worker" in stopped.output
    with deployment.session() as session:
        assert session.scalar(select(Analysis.status).where(Analysis.id == analysis_id)) == "completed"

"""Sustained mixed load: hook calls at a fixed rate while studies arrive over DICOM; CPU tiny-model worker.

Starts the scale-out shape as real processes (`veritrace api`, `dicom`, `worker -Q gpu,io`) on a fresh
PostgreSQL database, a private RabbitMQ vhost and a local FHIR server, then for `--duration` seconds:
- fires signed `patient-view` calls open-loop at `--rate` per second (each with its own JWT, prefetch sent);
- sends a new study (`--slices` CT instances) with dcmtk's storescu every `--study-every` seconds.
Every `--window` seconds it prints hook p50/p99, achieved rate and errors, instances ingested, queue depth,
analyses completed and the resident memory of each process. At the end it waits for the queue to drain and
checks that every study produced exactly one report and one analysis range in the ledger (one
analysis.started ... analysis.completed pair per analysis, nothing doubled), and that the ledger verifies.

    .venv/bin/python bench/load_mixed.py --duration 600            # the 10-minute run
    .venv/bin/python bench/load_mixed.py --duration 120 --write    # shorter, appended to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audit import Ledger  # noqa: E402
from cds.demo_ehr import DemoEhr, _fetch_prefetch  # noqa: E402
from cds.demo_study import build_demo_ct_study  # noqa: E402
from cds.settings import Settings  # noqa: E402
from integrations.celery_app import make_celery  # noqa: E402
from integrations.fhir.client import FhirClient  # noqa: E402
from integrations.fhir.server import LocalFhirServer  # noqa: E402
from integrations.fhir.synthetic import generate_patients, load_synthetic_patients  # noqa: E402
from integrations.ops.queue_depth import queue_depths  # noqa: E402
from integrations.store.engine import make_engine  # noqa: E402
from model.tiny import make_tiny  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
AMQP = "amqp://guest:guest@127.0.0.1:5672"
SERVICE = "veritrace-patient-view"
PATIENTS = ["vt-demo-1", "vt-demo-2", "vt-demo-3"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Window:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0


@dataclass
class Load:
    window: Window = field(default_factory=Window)
    all_latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    studies_sent: list[str] = field(default_factory=list)
    study_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_window(self) -> Window:
        with self.lock:
            window, self.window = self.window, Window()
        return window


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def hook_load(
    base: str, ehr: DemoEhr, bodies: list[dict[str, Any]], rate: float, stop_at: float, load: Load
) -> None:
    """Open loop: a call is started every 1/rate seconds whether or not earlier ones have answered."""
    url = f"{base}/cds-services/{SERVICE}"
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            call = {**body, "hookInstance": str(uuid.uuid4())}
            headers = {"Authorization": f"Bearer {ehr.sign(url)}"}
            started = time.perf_counter()
            try:
                response = await client.post(url, json=call, headers=headers)
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            elapsed = (time.perf_counter() - started) * 1000
            with load.lock:
                load.statuses[status] += 1
                if status == 200:
                    load.window.latencies_ms.append(elapsed)
                    load.all_latencies_ms.append(elapsed)
                else:
                    load.window.errors += 1

        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        next_at = time.monotonic()
        index = 0
        while time.monotonic() < stop_at:
            task = asyncio.create_task(one(bodies[index % len(bodies)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)


def study_sender(home: Path, port: int, every_s: float, slices: int, stop_at: float, load: Load) -> None:
    number = 0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        folder = home / "incoming" / f"study-{number}"
        paths = build_demo_ct_study(folder, patient_id=PATIENTS[number % len(PATIENTS)], slices=slices)
        from pydicom import dcmread

        study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        sent = subprocess.run(
            ["storescu", "-aet", "LOAD_PACS", "-aec", "VERITRACE", "127.0.0.1", str(port), *map(str, paths)],
            capture_output=True,
            timeout=120,
        )
        with load.lock:
            if sent.returncode == 0:
                load.studies_sent.append(study_uid)
            else:
                load.study_failures += 1
        number += 1
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))


def db_counts(engine: Any) -> tuple[int, int, int]:
    from sqlalchemy import func, select

    from integrations.store.models import Analysis, Instance, Report

    with engine.connect() as connection:
        instances = connection.execute(select(func.count(Instance.id))).scalar_one()
        completed = connection.execute(
            select(func.count(Analysis.id)).where(Analysis.status == "completed")
        ).scalar_one()
        reports = connection.execute(select(func.count(Report.id))).scalar_one()
    return int(instances), int(completed), int(reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=600)
    parser.add_argument("--rate", type=float, default=50.0, help="hook calls per second")
    parser.add_argument("--study-every", type=float, default=6.0, help="seconds between studies")
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--window", type=int, default=30, help="seconds per row of the table")
    parser.add_argument("--drain", type=int, default=300, help="seconds to wait for the queue to drain")
    parser.add_argument("--write", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vt-load-"))
    database = f"vt_load_{secrets.token_hex(4)}"
    vhost = f"vt-load-{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True
    )
    fhir = LocalFhirServer(work / "fhir")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        fhir.start()
        with FhirClient(fhir.base_url) as client:
            load_synthetic_patients(client, generate_patients(3))
        model_dir = make_tiny("qwen2_5_vl", work / "models" / "tiny-qwen2_5_vl")
        api_port, dicom_port = free_port(), free_port()
        env = {
            **os.environ,
            "VERITRACE_HOME": str(work / "home"),
            "VERITRACE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            "VERITRACE_BROKER_URL": f"{AMQP}/{vhost}",
            "VERITRACE_FHIR_BASE_URL": fhir.base_url,
            "VERITRACE_MODEL_PATH": str(model_dir),
            "VERITRACE_API_PORT": str(api_port),
            "VERITRACE_DICOM_PORT": str(dicom_port),
            "VERITRACE_STABLE_AGE": "2",
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("VERITRACE_")})
        ehr = DemoEhr.create(Settings())
        env["VERITRACE_CDS_ISSUERS_FILE"] = os.environ["VERITRACE_CDS_ISSUERS_FILE"] = str(ehr.issuers_file)
        settings = Settings()
        subprocess.run(
            [sys.executable, "-m", "cds.cli", "db", "upgrade"], env=env, check=True, capture_output=True
        )
        logs = work / "logs"
        logs.mkdir()
        for name, command in {
            "api": ["api"],
            "dicom": ["dicom"],
            "worker": ["worker", "-Q", "gpu,io"],
        }.items():
            with (logs / f"{name}.log").open("wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "cds.cli", *command], env=env, stdout=log, stderr=subprocess.STDOUT
                )
        base = settings.resolved_public_base_url
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        while "ready." not in (logs / "worker.log").read_text(errors="replace"):
            if processes["worker"].poll() is not None or time.monotonic() > deadline + 120:
                raise SystemExit("worker did not start: " + (logs / "worker.log").read_text()[-2000:])
            time.sleep(0.5)

        # Prefetch as an EHR sends it: read once per patient from the FHIR server.
        with httpx.Client(timeout=30) as client:
            discovery = client.get(f"{base}/cds-services").raise_for_status().json()
            templates = next(s for s in discovery["services"] if s["id"] == SERVICE).get("prefetch", {})
            bodies = []
            for patient in PATIENTS:
                context = {"userId": "Practitioner/load-user", "patientId": patient}
                prefetch = {
                    k: _fetch_prefetch(client, fhir.base_url, t, context) for k, t in templates.items()
                }
                bodies.append(
                    {
                        "hook": "patient-view",
                        "fhirServer": fhir.base_url,
                        "context": context,
                        "prefetch": prefetch,
                    }
                )

        engine = make_engine(settings.store_config())
        celery = make_celery(settings.resolved_broker_url)
        load = Load()
        started = time.monotonic()
        stop_at = started + args.duration
        sender = threading.Thread(
            target=study_sender,
            args=(work / "home", dicom_port, args.study_every, args.slices, stop_at, load),
            daemon=True,
        )
        sender.start()
        hooks = threading.Thread(
            target=lambda: asyncio.run(hook_load(base, ehr, bodies, args.rate, stop_at, load)), daemon=True
        )
        hooks.start()

        rows: list[str] = []
        header = (
            "| t (s) | hook calls/s | hook p50 (ms) | hook p99 (ms) | errors | instances | gpu queue "
            "| analyses done | RSS api / dicom / worker (MiB) |"
        )
        print(header)
        print("|" + "---|" * 9)
        last_instances = 0
        while time.monotonic() < stop_at:
            time.sleep(min(args.window, max(0.1, stop_at - time.monotonic())))
            window = load.take_window()
            elapsed = time.monotonic() - started
            instances, completed, _ = db_counts(engine)
            try:
                depth = queue_depths(celery).get("gpu", -1)
            except Exception:
                depth = -1
            calls = len(window.latencies_ms) + window.errors
            span = args.window if elapsed >= args.window else elapsed
            row = (
                f"| {elapsed:.0f} | {calls / span:.1f} | {percentile(window.latencies_ms, 0.5):.1f} | "
                f"{percentile(window.latencies_ms, 0.99):.1f} | {window.errors} | {instances} "
                f"(+{instances - last_instances}) | {depth} | {completed} | "
                + " / ".join(f"{rss_mib(p.pid):.0f}" for p in processes.values())
                + " |"
            )
            last_instances = instances
            rows.append(row)
            print(row, flush=True)
        hooks.join(timeout=60)
        sender.join(timeout=180)

        drain_deadline = time.monotonic() + args.drain
        sent = list(load.studies_sent)
        while time.monotonic() < drain_deadline:
            _, completed, _ = db_counts(engine)
            if completed >= len(sent):
                break
            time.sleep(2)
        drained_after = args.drain - max(0.0, drain_deadline - time.monotonic())

        ledger = Ledger(engine, settings.ledger_config())
        entries = list(ledger.iter_entries())
        from sqlalchemy import func, select

        from integrations.store.models import Analysis, Report, Study

        one_report = one_range = 0
        problems: list[str] = []
        started_by: Counter[str] = Counter()
        completed_by: Counter[str] = Counter()
        for entry in entries:
            analysis_id = (entry.payload or {}).get("analysis_id")
            if entry.kind == "analysis.started" and analysis_id:
                started_by[analysis_id] += 1
            if entry.kind == "analysis.completed" and analysis_id:
                completed_by[analysis_id] += 1
        with engine.connect() as connection:
            for study_uid in sent:
                reports = connection.execute(
                    select(func.count(Report.id)).where(Report.study_uid == study_uid)
                ).scalar_one()
                analyses = (
                    connection.execute(
                        select(Analysis.id)
                        .join(Study, Study.id == Analysis.study_id)
                        .where(Study.study_uid == study_uid)
                    )
                    .scalars()
                    .all()
                )
                if reports == 1:
                    one_report += 1
                else:
                    problems.append(f"{study_uid}: {reports} reports")
                if len(analyses) == 1 and started_by[analyses[0]] == 1 and completed_by[analyses[0]] == 1:
                    one_range += 1
                else:
                    problems.append(f"{study_uid}: analyses={len(analyses)}")
        verified = ledger.verify().ok
        all_ms = load.all_latencies_ms
        total_calls = sum(load.statuses.values())
        summary = [
            f"- duration {args.duration} s, target {args.rate:.0f} hook calls/s, "
            f"one {args.slices}-slice study "
            f"every {args.study_every:g} s; machine: {os.cpu_count()} cores, shared, load average "
            f"{os.getloadavg()[0]:.1f} at the end",
            f"- hook calls: {total_calls} ({total_calls / args.duration:.1f}/s achieved), statuses "
            f"{dict(load.statuses)}, p50 {statistics.median(all_ms) if all_ms else float('nan'):.1f} ms, "
            f"p99 {percentile(all_ms, 0.99):.1f} ms over the whole run",
            f"- studies sent: {len(sent)} ({load.study_failures} sends failed); "
            f"exactly one report: {one_report}/{len(sent)}; exactly one analysis range in the ledger: "
            f"{one_range}/{len(sent)}; queue drained {drained_after:.0f} s after the load stopped",
            f"- ledger: {len(entries)} entries, verify ok = {verified}",
        ]
        for line in summary:
            print(line)
        for problem in problems[:20]:
            print("  problem:", problem)
        if args.write:
            with (ROOT / "bench" / "RESULTS.md").open("a") as out:
                out.write(
                    "\n## Mixed load\n\n"
                    f"`bench/load_mixed.py --duration {args.duration} --rate {args.rate:g} "
                    f"--study-every {args.study_every:g}` (api, dicom and a CPU tiny-model worker as "
                    "separate processes on PostgreSQL + RabbitMQ; run on "
                    f"{time.strftime('%Y-%m-%d')}).\n\n"
                    + header
                    + "\n|"
                    + "---|" * 9
                    + "\n"
                    + "\n".join(rows)
                    + "\n\n"
                    + "\n".join(summary)
                    + "\n"
                )
        engine.dispose()
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        fhir.stop()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()

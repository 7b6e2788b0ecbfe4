"""`veritrace demo`: one study travels the whole path on real parts, and the output says what happened.

A real FHIR server with synthetic patients, a real DICOM association into our SCP, a real Celery worker
process running a tiny untrained VLM, a signed CDS Hooks call, and the audit ledger verified at the end.
When Node and ``deploy/smart-ehr``'s modules are there, a stand-in EHR (a real OAuth 2 / OIDC server)
launches the draft viewer from the card's ``smart`` link, as a hospital EHR would.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import select

from cds.composition import Components
from cds.demo_ehr import DemoEhr
from cds.demo_model import ensure_demo_model
from cds.demo_smart_ehr import EHR_DIR, unavailable_reason
from cds.demo_study import build_demo_ct_study, store_instances
from cds.demo_viewer import DemoViewerEhr, demo_viewer_ehr, follow_ehr_launch
from cds.settings import Settings
from integrations.store.models import Analysis, Report, Study

DEMO_PATIENT = "vt-demo-1"
WAIT_FOR_DRAFT_S = 300.0


@contextmanager
def _step(console: Console, text: str) -> Iterator[None]:
    started = time.perf_counter()
    with console.status(text):
        yield
    console.print(f"[green]✓[/] {text} [dim]({time.perf_counter() - started:.1f} s)[/]")


def _wait_for_report(
    components: Components, worker: subprocess.Popen[bytes], study_uid: str, timeout_s: float
) -> Report:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with components.session_factory() as session:
            report = session.scalar(
                select(Report).where(Report.study_uid == study_uid, Report.status == "draft")
            )
            failed = session.scalar(
                select(Analysis.error)
                .join(Study, Analysis.study_id == Study.id)
                .where(Study.study_uid == study_uid, Analysis.status == "failed")
            )
        if worker.poll() is not None:
            raise RuntimeError(f"the worker process exited ({worker.returncode}); see its log")
        if report is not None and report.fhir_report_id:
            return report
        if failed:
            raise RuntimeError(f"analysis failed: {failed}")
        time.sleep(0.5)
    raise TimeoutError(f"no draft report within {timeout_s:.0f} s")


def _print_card(console: Console, response: dict[str, Any]) -> None:
    for card in response.get("cards", []):
        body = f"[b]{escape(card['summary'])}[/b]\n\n{escape(card.get('detail', ''))}"
        links = "\n".join(
            escape(f"→ {link['label']} ({link['type']} link): {link['url']}")
            for link in card.get("links", [])
        )
        console.print(
            Panel(
                f"{body}\n\n{links}",
                title=escape(f"CDS card · {card['indicator']} · {card['source']['label']}"),
            )
        )


def _print_trace(console: Console, components: Components, study_uid: str) -> None:
    table = Table(title="Audit ledger entries for this study", show_lines=False)
    for column in ("index", "kind", "actor", "leaf hash"):
        table.add_column(column)
    ledger = components.ledger
    for index in range(ledger.size()):
        entry = ledger.entry(index)
        if entry.study_uid == study_uid or entry.kind.startswith("cds."):
            table.add_row(str(index), entry.kind, entry.actor, entry.leaf_hash[:16] + "…")
    console.print(table)


def _viewer_link(response: dict[str, Any], report_id: str) -> dict[str, Any] | None:
    for card in response.get("cards", []):
        if card.get("extension", {}).get("veritrace.report", {}).get("reportId") == report_id:
            links: list[dict[str, Any]] = card.get("links", [])
            return next((link for link in links if link.get("type") == "smart"), None)
    return None


def start_viewer_ehr(
    console: Console, stack: ExitStack, settings: Settings, fhir_base_url: str, *, ehr_dir: Path = EHR_DIR
) -> DemoViewerEhr | None:
    """The stand-in EHR with the viewer registered, its settings put in ``os.environ`` for the API.

    None, after one line saying why, when Node or the stand-in's modules are missing: the card then
    carries a plain ``absolute`` link and the demo goes on.
    """
    missing = unavailable_reason(ehr_dir)
    if missing is not None:
        console.print(f"[yellow]![/] No SMART launch of the viewer ({escape(missing)}): plain link instead.")
        return None
    with _step(console, "Stand-in EHR started (SMART authorization server, deploy/smart-ehr)"):
        viewer = stack.enter_context(
            demo_viewer_ehr(settings, fhir_base_url=fhir_base_url, patient_id=DEMO_PATIENT)
        )
    os.environ.update(viewer.environment)
    return viewer


def open_viewer(
    console: Console, viewer: DemoViewerEhr, response: dict[str, Any], report: Report, keep_running: bool
) -> str:
    """Launch the card's ``smart`` link through the stand-in EHR once; print and return the URL to open."""
    link = _viewer_link(response, report.id)
    if link is None:
        raise RuntimeError("the draft's card has no smart link to the viewer")
    open_url = viewer.open_url(link, DEMO_PATIENT)
    with _step(console, "Viewer opened through an EHR launch (authorize with PKCE → callback → draft)"):
        page = follow_ehr_launch(open_url)
        if page.status_code != 200 or f'data-report="{report.id}"' not in page.text:
            raise RuntimeError(f"the viewer launch ended with HTTP {page.status_code}, not the draft")
    when = "while the demo runs" if keep_running else "with `veritrace demo --keep-running`"
    console.print(f"  Open the draft as a clinician ({when}): {escape(open_url)}", soft_wrap=True)
    return open_url


def run_demo(settings: Settings, *, keep_running: bool = False) -> int:
    from cds.processes import api_in_background, dicom_gateway, worker_subprocess
    from integrations.fhir.client import FhirClient
    from integrations.fhir.server import LocalFhirServer
    from integrations.fhir.synthetic import generate_patients, load_synthetic_patients

    console = Console()
    console.print(
        Panel(
            "This demo runs a [b]tiny, randomly initialised (untrained) model[/b]. Its text is noise and is "
            "labelled as such; the point is the path: DICOM → analysis → FHIR → CDS card → audit ledger.",
            title="Veritrace demo",
        )
    )
    components = Components(settings)
    with ExitStack() as stack:
        with _step(console, f"Prepared {settings.resolved_home} (database, ledger key)"):
            components.prepare_storage()
        with _step(console, "Model ready (tiny untrained qwen2_5_vl)"):
            ensure_demo_model(settings)
        fhir_dir = settings.resolved_home / "fhir"
        with _step(console, "FHIR R4 server started (sekmet-fhir)"):
            fhir = stack.enter_context(LocalFhirServer(fhir_dir))
        # The worker subprocess and this process must both see the demo's FHIR server and CDS client.
        os.environ["VERITRACE_FHIR_BASE_URL"] = fhir.base_url
        viewer = start_viewer_ehr(console, stack, settings, fhir.base_url)
        ehr = DemoEhr.create(settings)
        os.environ["VERITRACE_CDS_ISSUERS_FILE"] = str(ehr.issuers_file)
        settings = Settings()
        components = Components(settings)
        with _step(console, "Synthetic patients loaded"), FhirClient(fhir.base_url) as client:
            ids = load_synthetic_patients(client, generate_patients())
        console.print(f"  patients: {', '.join(ids)}")
        with _step(console, "Worker process started (queues gpu, io)"):
            worker = stack.enter_context(
                worker_subprocess(log_path=settings.resolved_home / "logs" / "worker.log")
            )
        with _step(console, f"DICOM SCP {settings.dicom_ae_title} listening on port {settings.dicom_port}"):
            stack.enter_context(dicom_gateway(components))
        with _step(console, f"CDS Hooks API on {settings.resolved_public_base_url}"):
            stack.enter_context(api_in_background(components))
        study_dir = settings.resolved_home / "demo-study"
        paths = build_demo_ct_study(study_dir, patient_id=DEMO_PATIENT)
        study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        with _step(console, f"Sent a {len(paths)}-slice CT study over DICOM (C-STORE)"):
            statuses = store_instances(
                paths, host=settings.dicom_host, port=settings.dicom_port, called_ae=settings.dicom_ae_title
            )
            accepted = statuses.count(0x0000)
            if accepted != len(paths):
                raise RuntimeError(f"SCP accepted {accepted} of {len(paths)} instances")
        with _step(console, f"Study stable after {settings.stable_age:g} s, analysed, draft written to FHIR"):
            report = _wait_for_report(components, worker, study_uid, WAIT_FOR_DRAFT_S)
        console.print(f"  DiagnosticReport/{report.fhir_report_id} (status preliminary) on {fhir.base_url}")
        with _step(console, "patient-view hook fired with a signed CDS client JWT"):
            response = ehr.call_patient_view(settings, DEMO_PATIENT, fhir.base_url)
        _print_card(console, response)
        if viewer is not None:
            open_viewer(console, viewer, response, report, keep_running)
        console.print(Markdown(report.markdown))
        _print_trace(console, components, study_uid)
        with _step(console, "Audit ledger verified from the database against the latest checkpoint"):
            components.ledger.checkpoint()
            verification = components.ledger.verify()
        if not verification.ok:
            console.print(f"[b red]Ledger verification FAILED at index {verification.first_bad_index}[/]")
            return 1
        console.print("[b green]Demo complete.[/]")
        console.print(
            escape(
                f"Serve what it produced: VERITRACE_HOME={settings.home} "
                f"VERITRACE_CDS_ISSUERS_FILE={ehr.issuers_file} veritrace api"
            )
        )
        if keep_running:
            console.print("Services stay up; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0

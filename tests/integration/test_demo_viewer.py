"""`veritrace demo`'s viewer step: the card's link opened through an EHR launch on the real stand-in.

The demo's own pieces, in the demo's order, on real processes: sekmet-fhir, the Node stand-in EHR
(``start_viewer_ehr``), the API the way the demo serves it (``api_in_background``), the demo EHR's
signed ``patient-view`` call. The draft is seeded instead of generated (the worker and the model are
covered by tests/e2e). ``open_viewer`` launches the card's ``smart`` link through the EHR page it
prints, and the test opens that URL again as a person would.
"""

from __future__ import annotations

import io
import os
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from cds.composition import Components
from cds.demo import DEMO_PATIENT, open_viewer, start_viewer_ehr
from cds.demo_ehr import DemoEhr
from cds.demo_viewer import follow_ehr_launch
from cds.processes import api_in_background
from cds.settings import Settings
from integrations.fhir.server import LocalFhirServer
from tests.conftest import free_port
from tests.integration.cds_support import Store, seed_report

VIEWER_VARIABLES = (
    "VERITRACE_VIEWER_CLIENT_ID",
    "VERITRACE_VIEWER_CLIENT_SECRET",
    "VERITRACE_VIEWER_ALLOWED_ISSUERS",
    "VERITRACE_VIEWER_FRAME_ANCESTORS",
)
SUMMARY = "Indeterminate 8 mm right lower lobe nodule"


@pytest.fixture
def demo_env(tmp_path: Path, fhir_server: LocalFhirServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The demo's environment; everything the demo puts in os.environ is restored afterwards."""
    monkeypatch.setenv("VERITRACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VERITRACE_API_PORT", str(free_port()))
    monkeypatch.setenv("VERITRACE_FHIR_BASE_URL", fhir_server.base_url)
    for name in (*VIEWER_VARIABLES, "VERITRACE_CDS_ISSUERS_FILE"):
        monkeypatch.setenv(name, "")  # recorded, so teardown restores what the demo sets
        monkeypatch.delenv(name)
    return Settings()


def test_the_demo_card_opens_the_draft_through_an_ehr_launch(
    demo_env: Settings, fhir_server: LocalFhirServer
) -> None:
    out = io.StringIO()
    console = Console(file=out, width=400)
    with ExitStack() as stack:
        viewer = start_viewer_ehr(console, stack, demo_env, fhir_server.base_url)
        assert viewer is not None, out.getvalue()
        assert os.environ["VERITRACE_VIEWER_CLIENT_ID"] == "veritrace-viewer"
        ehr = DemoEhr.create(demo_env)
        os.environ["VERITRACE_CDS_ISSUERS_FILE"] = str(ehr.issuers_file)
        settings = Settings()
        components = Components(settings)
        components.prepare_storage()
        store = Store(components.engine, components.session_factory, components.ledger)
        report = seed_report(store, patient_id=DEMO_PATIENT, summary=SUMMARY)
        with api_in_background(components):
            response = ehr.call_patient_view(settings, DEMO_PATIENT, fhir_server.base_url)
            links = [link for card in response["cards"] for link in card["links"]]
            assert links and {link["type"] for link in links} == {"smart"}
            open_url = open_viewer(console, viewer, response, report, keep_running=False)
            assert open_url in out.getvalue()
            assert open_url.startswith(f"{viewer.ehr.base_url}/ehr/open?")

            page = follow_ehr_launch(open_url)  # a person opening the printed URL
            assert page.status_code == 200
            assert str(page.url).startswith(f"{settings.resolved_public_base_url}/viewer/callback?code=")
            assert SUMMARY in page.text and f'data-report="{report.id}"' in page.text
            assert 'name="viewer-session"' in page.text
            assert "frame-ancestors 'self' " + viewer.ehr.base_url in page.headers["content-security-policy"]
        components.engine.dispose()
    assert "Viewer opened through an EHR launch" in out.getvalue()
    assert settings.viewer_client_secret.get_secret_value() not in out.getvalue()


def test_without_the_stand_in_the_demo_says_so_and_keeps_the_plain_link(
    demo_env: Settings, fhir_server: LocalFhirServer, tmp_path: Path
) -> None:
    out = io.StringIO()
    with ExitStack() as stack:
        viewer = start_viewer_ehr(
            Console(file=out, width=400), stack, demo_env, fhir_server.base_url, ehr_dir=tmp_path / "absent"
        )
    assert viewer is None
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1 and "No SMART launch of the viewer" in lines[0] and "plain link" in lines[0]
    assert "VERITRACE_VIEWER_CLIENT_ID" not in os.environ
    components = Components(Settings())
    components.prepare_storage()
    store = Store(components.engine, components.session_factory, components.ledger)
    seed_report(store, patient_id=DEMO_PATIENT, summary=SUMMARY)
    ehr = DemoEhr.create(components.settings)
    os.environ["VERITRACE_CDS_ISSUERS_FILE"] = str(ehr.issuers_file)
    components = Components(Settings())
    with api_in_background(components):
        response = ehr.call_patient_view(components.settings, DEMO_PATIENT, fhir_server.base_url)
    components.engine.dispose()
    links = [link for card in response["cards"] for link in card["links"]]
    assert links and {link["type"] for link in links} == {"absolute"}
    assert httpx.URL(links[0]["url"]).path.startswith("/viewer/reports/")


def test_missing_node_or_modules_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cds.demo_smart_ehr import EHR_DIR, unavailable_reason

    (tmp_path / "ehr.mjs").write_text("")
    assert "npm ci" in (unavailable_reason(tmp_path) or "")
    assert unavailable_reason(EHR_DIR) is None  # installed by scripts/ensure-test-services
    monkeypatch.setenv("PATH", str(tmp_path))
    assert unavailable_reason(EHR_DIR) == "node is not installed"

"""The demo's SMART side: the stand-in EHR with the draft viewer registered, and the URL to open.

A card's ``smart`` link is not a page to open directly: an EHR launches it (SMART App Launch 2) by
adding ``iss`` and ``launch``. The demo therefore hands a person the stand-in EHR's ``/ehr/open`` page,
which does what a real EHR does when the link is clicked: it issues a launch and opens the viewer in an
iframe, and the viewer takes it from there (discovery → authorize with PKCE → callback → the draft).
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from cds.demo_smart_ehr import RunningSmartEhr, SmartClient, SmartEhrConfig, running_smart_ehr
from cds.settings import Settings
from integrations.fhir.server import free_port

VIEWER_CLIENT_ID = "veritrace-viewer"
DEMO_CLINICIAN = "vt-demo-radiologist"
_IFRAME_SRC = re.compile(r'<iframe id="app"[^>]*\ssrc="([^"]+)"')


@dataclass(frozen=True)
class DemoViewerEhr:
    """The running stand-in EHR and the viewer settings that register the API with it."""

    ehr: RunningSmartEhr
    environment: dict[str, str]
    """``VERITRACE_VIEWER_*`` for the API process (the client secret among them: never print it)."""

    def open_url(self, link: dict[str, Any], patient_id: str) -> str:
        """The EHR page that launches ``link`` (a card's ``smart`` link) for ``patient_id``."""
        query = {"app": str(link["url"]), "patient": patient_id, "iss": self.ehr.iss}
        if link.get("appContext"):
            query["appContext"] = str(link["appContext"])
        return f"{self.ehr.base_url}/ehr/open?{urlencode(query)}"


@contextmanager
def demo_viewer_ehr(settings: Settings, *, fhir_base_url: str, patient_id: str) -> Iterator[DemoViewerEhr]:
    """Start the stand-in EHR in front of ``fhir_base_url`` with the viewer as a registered client.

    Requires ``cds.demo_smart_ehr.unavailable_reason()`` to be None. The client secret is new each run.
    """
    public = settings.resolved_public_base_url.rstrip("/")
    secret = secrets.token_urlsafe(32)
    config = SmartEhrConfig(
        port=free_port(),
        fhir_upstream=fhir_base_url,
        # The demo's FHIR server has no auth; the gateway sends this bearer anyway and it is ignored.
        fhir_upstream_token=secrets.token_urlsafe(16),
        user=DEMO_CLINICIAN,
        standalone_patient=patient_id,
        clients=(SmartClient(VIEWER_CLIENT_ID, secret, (f"{public}/viewer/callback",)),),
    )
    with running_smart_ehr(config, settings.resolved_home / "smart-ehr") as ehr:
        yield DemoViewerEhr(
            ehr=ehr,
            environment={
                "VERITRACE_VIEWER_CLIENT_ID": VIEWER_CLIENT_ID,
                "VERITRACE_VIEWER_CLIENT_SECRET": secret,
                "VERITRACE_VIEWER_ALLOWED_ISSUERS": json.dumps([ehr.iss]),
                "VERITRACE_VIEWER_FRAME_ANCESTORS": json.dumps([ehr.base_url]),
            },
        )


def follow_ehr_launch(open_url: str, *, timeout_s: float = 30.0) -> httpx.Response:
    """Do what a browser does with ``open_url``: load the EHR page, open its iframe, follow redirects.

    Returns the last response: the viewer's page on success, its error page otherwise.
    """
    with httpx.Client(follow_redirects=True, timeout=timeout_s) as browser:
        page = browser.get(open_url)
        page.raise_for_status()
        match = _IFRAME_SRC.search(page.text)
        if match is None:
            raise RuntimeError("the EHR page embeds no app")
        return browser.get(html.unescape(match.group(1)))

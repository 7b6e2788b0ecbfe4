"""EHR launch of the draft viewer over real sockets: stand-in EHR (oidc-provider), sekmet-fhir, Veritrace.

An httpx client plays the browser: it follows the redirects from the card's link through the EHR's
authorization server back to the viewer, then uses the page's session handle as the page's script does.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from audit import Ledger
from cds.services.draft_reports import acknowledged_report_ids
from cds.viewer.pkce import challenge_s256
from integrations.store.models import Feedback
from tests.integration.test_viewer_stack import ViewerStack, page_handle, running_viewer_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStack]:
    with running_viewer_stack(tmp_path_factory.mktemp("viewer-launch")) as running:
        yield running


def _launch(stack: ViewerStack, url: str, patient: str, app_context: str | None) -> httpx.Response:
    launch = stack.new_launch(patient, app_context)
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        return browser.get(url, params={"iss": stack.iss, "launch": launch})


def _open_card(stack: ViewerStack) -> tuple[httpx.Response, str]:
    link = stack.card["links"][0]
    response = _launch(stack, link["url"], stack.patient, link.get("appContext"))
    assert response.status_code == 200, response.text
    return response, page_handle(response.text)


def _ledger_kinds(ledger: Ledger) -> list[tuple[str, str, dict]]:
    return [(e.kind, e.actor, e.payload or {}) for e in ledger.iter_entries()]


def test_pkce_s256_agrees_with_an_independent_implementation() -> None:
    """Node's crypto (base64url of SHA-256) as the reference; the launch tests show the EHR agrees too."""
    verifier = "dBjftJeZ4CVP-mJ92K9Ljk0MN1UJbMFaTFaeEgDPhGE"
    script = f"console.log(require('crypto').createHash('sha256').update('{verifier}').digest('base64url'))"
    expected = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert challenge_s256(verifier) == expected
    with pytest.raises(ValueError, match="43 to 128"):
        challenge_s256("short")


def test_card_link_launch_shows_the_draft_with_verdicts_and_proof(stack: ViewerStack) -> None:
    response, _handle = _open_card(stack)
    html = response.text
    assert str(response.url).startswith(f"{stack.viewer_url}/viewer/callback?code=")
    assert "Indeterminate 8 mm right lower lobe nodule" in html
    assert html.count('data-verdict="verified"') == 3
    assert html.count('data-verdict="rejected"') == 1 and "laterality mismatch" in html
    assert 'data-proof="verified"' in html and "inclusion proof of" in html
    assert "Qwen2_5_VLForConditionalGeneration" in html
    assert "untrained model" in html and "RIS" in html
    assert "Creatinine 1.4 mg/dL on 2025-01-10" in html
    assert "Disagree with the AI finding" in html  # the card's override reasons
    assert "access_token" not in html and "eyJ" not in html  # the FHIR token stays on the server
    kinds = _ledger_kinds(stack.store.ledger)
    opened = [e for e in kinds if e[0] == "viewer.opened"]
    assert opened and opened[-1][1] == f"smart-user:{stack.iss}/Practitioner/dr-viewer-test"
    assert opened[-1][2]["reportId"] == stack.report_id


def test_frame_headers_allow_only_the_ehr_origin(stack: ViewerStack) -> None:
    response, _ = _open_card(stack)
    csp = response.headers["content-security-policy"]
    assert f"frame-ancestors 'self' {stack.ehr_url}" in csp
    assert "x-frame-options" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in response.headers


def test_citations_open_the_cited_version_read_with_the_clinicians_token(stack: ViewerStack) -> None:
    _, handle = _open_card(stack)
    with httpx.Client(base_url=f"{stack.viewer_url}/viewer/api", headers={"X-Viewer-Session": handle}) as api:
        lab = api.get("/evidence/ev-lab").json()
        med = api.get("/evidence/ev-med").json()
        missing = api.get("/evidence/ev-nothing")
    assert lab["reference"] == f"Observation/{stack.evidence['lab']}"
    assert lab["value"] == "1.4 mg/dL" and lab["date"] == "2025-01-10"
    assert lab["changed_since_cited"] is True and lab["current_version"] != lab["cited_version"]
    # The viewer asks for MedicationRequest.rs and the EHR granted it: the record's text comes back.
    assert med["value"] == "Metformin 500 mg tablet" and med["status"] == "active"
    assert missing.status_code == 404


def test_key_images_are_png_for_the_session_only(stack: ViewerStack) -> None:
    response, handle = _open_card(stack)
    marker = 'data-src="/viewer/api/images/'
    path = response.text.split(marker, 1)[1].split('"', 1)[0].replace("&amp;", "&")
    url = f"{stack.viewer_url}/viewer/api/images/{path}"
    thumb = httpx.get(url, headers={"X-Viewer-Session": handle})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 192
    large = httpx.get(
        url.replace("size=thumb", "size=large").replace("preset=default", "preset=lung"),
        headers={"X-Viewer-Session": handle},
    )
    assert large.status_code == 200 and large.content != thumb.content
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-Viewer-Session": "forged"}).status_code == 401
    bad = httpx.get(url.replace("preset=default", "preset=nonsense"), headers={"X-Viewer-Session": handle})
    assert bad.status_code == 400 and "preset" in bad.json()["error"]


def test_override_with_reason_becomes_cds_feedback_and_a_ledger_entry(stack: ViewerStack) -> None:
    _, handle = _open_card(stack)
    comment = "Effusion is on the right, patient-specific remark"
    with httpx.Client(base_url=f"{stack.viewer_url}/viewer/api", headers={"X-Viewer-Session": handle}) as api:
        no_reason = api.post("/feedback", json={"outcome": "overridden"})
        unknown = api.post("/feedback", json={"outcome": "overridden", "reason": "made-up"})
        done = api.post(
            "/feedback", json={"outcome": "overridden", "reason": "disagree-with-finding", "comment": comment}
        )
    assert no_reason.status_code == 400 and unknown.status_code == 400
    assert done.status_code == 200 and done.json()["outcome"] == "overridden"
    with stack.store.session_factory() as session:
        rows = session.scalars(select(Feedback).where(Feedback.card_uuid == stack.card["uuid"])).all()
    overridden = [r for r in rows if r.outcome == "overridden"]
    assert len(overridden) == 1
    reason = overridden[0].override_reason or {}
    assert reason["reason"]["code"] == "disagree-with-finding"
    assert reason["reason"]["display"] == "Disagree with the AI finding"
    assert reason["userComment"] == comment
    entries = [e for e in _ledger_kinds(stack.store.ledger) if e[0] == "cds.feedback"]
    assert entries[-1][1] == f"smart-user:{stack.iss}/Practitioner/dr-viewer-test"
    payload = entries[-1][2]
    assert payload["card"] == stack.card["uuid"] and payload["outcome"] == "overridden"
    assert payload["overrideReason"] == "disagree-with-finding" and payload["userComment"] is True
    assert payload["via"] == "viewer" and comment not in json.dumps(payload)


def test_accept_marks_the_report_acknowledged(stack: ViewerStack) -> None:
    _, handle = _open_card(stack)
    with httpx.Client(base_url=f"{stack.viewer_url}/viewer/api", headers={"X-Viewer-Session": handle}) as api:
        bad = api.post("/feedback", json={"outcome": "accepted", "reason": "not-relevant"})
        done = api.post("/feedback", json={"outcome": "accepted"})
    assert bad.status_code == 400 and done.status_code == 200
    with stack.store.session_factory() as session:
        assert acknowledged_report_ids(session, report_ids=[stack.report_id]) == {stack.report_id}


def test_reload_keeps_the_session_without_cookies(stack: ViewerStack) -> None:
    _, handle = _open_card(stack)
    shell = httpx.get(f"{stack.viewer_url}/viewer/app")
    assert shell.status_code == 200 and 'data-empty="true"' in shell.text and "nodule" not in shell.text
    fragment = httpx.get(f"{stack.viewer_url}/viewer/api/page", headers={"X-Viewer-Session": handle})
    assert fragment.status_code == 200 and "Indeterminate 8 mm right lower lobe nodule" in fragment.text
    assert httpx.get(f"{stack.viewer_url}/viewer/api/page").status_code == 401


def test_launch_endpoint_takes_the_draft_from_app_context(stack: ViewerStack) -> None:
    context = json.dumps({"reportId": stack.report_id})
    response = _launch(stack, f"{stack.viewer_url}/viewer/launch", stack.patient, context)
    assert response.status_code == 200 and "Indeterminate 8 mm right lower lobe nodule" in response.text

"""The full EHR launch in headless Chromium: the card's link opened by the stand-in EHR in an iframe.

The EHR page (127.0.0.1) embeds the viewer served from "localhost", another site, as a real EHR
embeds a third-party app: the viewer must work without cookies inside the frame. Screenshots go to
``test-artifacts/screenshots/``: the draft with verdicts and key images, a cited lab opened, the larger
image with the lung window, the recorded override, and a refused launch for another patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, FrameLocator, Page, expect, sync_playwright
from sqlalchemy import select

from integrations.store.models import Feedback
from tests.integration.test_viewer_stack import ViewerStack, running_viewer_stack

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStack]:
    with running_viewer_stack(tmp_path_factory.mktemp("viewer-browser"), viewer_host="localhost") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian chromium package")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def _open_in_ehr(page: Page, stack: ViewerStack, patient: str) -> FrameLocator:
    link = stack.card["links"][0]
    query = {"app": link["url"], "patient": patient, "iss": stack.iss}
    if link.get("appContext"):
        query["appContext"] = link["appContext"]
    page.goto(f"{stack.ehr_url}/ehr/open?{urlencode(query)}")
    return page.frame_locator("#app")


def test_ehr_launch_to_override_in_chromium(stack: ViewerStack, browser: Browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    app = _open_in_ehr(page, stack, stack.patient)
    expect(app.locator("h1")).to_contain_text("Indeterminate 8 mm right lower lobe nodule", timeout=15000)
    expect(app.locator('[data-verdict="rejected"]')).to_have_count(1)
    expect(app.locator('[data-verdict="verified"]')).to_have_count(3)
    expect(app.locator('[data-proof="verified"]')).to_be_visible()
    thumb = app.locator("img.thumb").first
    expect(thumb).to_have_attribute("src", _blob(), timeout=10000)
    assert thumb.evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(SHOTS / "viewer-01-draft.png"), full_page=True)

    app.locator("button.cite", has_text="Creatinine").first.click()
    dialog = app.locator("#evidence-dialog")
    expect(dialog).to_contain_text("1.4 mg/dL", timeout=10000)
    expect(dialog).to_contain_text("2025-01-10")
    expect(dialog).to_contain_text("Changed since")
    page.screenshot(path=str(SHOTS / "viewer-02-cited-lab.png"))
    dialog.get_by_role("button", name="Close").click()

    app.locator(".thumbs button").first.click()
    large = app.locator("#image-large")
    expect(large).to_have_attribute("src", _blob(), timeout=10000)
    first_src = large.get_attribute("src")
    app.get_by_role("button", name="Lung").click()
    expect(large).not_to_have_attribute("src", first_src or "", timeout=10000)
    page.screenshot(path=str(SHOTS / "viewer-03-image-lung-window.png"))
    app.locator("#image-dialog").get_by_role("button", name="Close").click()

    app.get_by_label("Reason").select_option("disagree-with-finding")
    app.get_by_label("Comment (optional)").fill("Effusion not seen on my read")
    app.get_by_role("button", name="Override").click()
    expect(app.locator("#action-status")).to_contain_text("Overridden", timeout=10000)
    page.screenshot(path=str(SHOTS / "viewer-04-overridden.png"), full_page=True)
    page.close()

    with stack.store.session_factory() as session:
        rows = session.scalars(select(Feedback).where(Feedback.card_uuid == stack.card["uuid"])).all()
    assert [r.outcome for r in rows] == ["overridden"]
    assert (rows[0].override_reason or {})["userComment"] == "Effusion not seen on my read"
    feedback = [e for e in stack.store.ledger.iter_entries() if e.kind == "cds.feedback"]
    assert len(feedback) == 1 and (feedback[0].payload or {})["overrideReason"] == "disagree-with-finding"
    assert feedback[0].patient_ref == f"Patient/{stack.patient}"


def test_launch_for_another_patient_shows_only_the_refusal(stack: ViewerStack, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 700})
    app = _open_in_ehr(page, stack, stack.other_patient)
    expect(app.locator("h1")).to_contain_text("This draft is about another patient", timeout=15000)
    expect(app.locator("body")).not_to_contain_text("nodule")
    page.screenshot(path=str(SHOTS / "viewer-05-refused-other-patient.png"))
    page.close()


def _blob() -> re.Pattern[str]:
    return re.compile(r"^blob:")

"""The review app in real headless Chromium (Debian's, driven by Playwright): sign-in at a real OIDC
provider, search, a trace, an inclusion proof checked in the browser, verify-now, an export download,
and a refused role. Screenshots go to test-artifacts/screenshots/ (git-ignored; CI keeps them there)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from audit.review import OidcConfig, ReviewConfig
from tests.conftest import free_port
from tests.integration.review_idp import CLIENT_ID, CLIENT_SECRET, running_idp
from tests.integration.review_seed import SeededStore, review_app, seed

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread
        return


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SeededStore]]:
    """The review app on a real socket, signing in at the real test IdP."""
    store = seed(tmp_path_factory.mktemp("review-browser"), extra=30)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_idp(free_port(), base + "/review/auth/callback") as idp:
        config = ReviewConfig(
            oidc=OidcConfig(
                issuer=idp.issuer,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                redirect_uri=idp.redirect_uri,
            ),
            secure_cookies=False,
        )
        server = _Server(
            uvicorn.Config(review_app(store, config), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "review app did not start"
            time.sleep(0.05)
        try:
            yield base, store
        finally:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"review-{name}.png"), full_page=True)


def sign_in(browser: Browser, base: str, login: str, start: str = "/review/analyses") -> Page:
    """Open ``start``, get sent to sign-in, sign in at the IdP with the keyboard, come back."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    page = context.new_page()
    page.goto(base + start)
    expect(page).to_have_url(re.compile(r"/review/login\?next="))
    page.get_by_role("link", name="Sign in with the hospital account").click()
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any password")
    page.locator('input[name="password"]').press("Enter")
    page.wait_for_url(re.compile(re.escape(base) + r"/review/"))
    return page


def test_sign_in_search_and_open_a_trace(browser: Browser, site: tuple[str, SeededStore]) -> None:
    base, store = site
    page = sign_in(browser, base, "officer")
    expect(page).to_have_url(base + "/review/analyses")
    expect(page.locator("#who")).to_contain_text("Casey Compliance (compliance-officer)")
    expect(page.locator("#result-count")).to_contain_text("33 analyses found; page 1 of 2")
    shot(page, "01-analyses")

    page.get_by_label("Patient id").fill("pat-1001")
    page.get_by_label("Verification failures").select_option("yes")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#result-count")).to_contain_text("1 analysis found")
    assert "pat-1001" not in page.url  # the filter lives in the session, not the URL
    shot(page, "02-search")

    page.locator("#analyses tbody a").first.click()
    expect(page.get_by_role("heading", name="Decision trace")).to_be_visible()
    expect(page.locator("#statements li")).to_have_count(2)
    expect(page.locator("#statements .tag-rejected")).to_have_text("rejected")
    expect(page.locator("#timeline li")).to_have_count(5)
    expect(page.locator("#outcome")).to_have_text("overridden")
    expect(page.locator("#feedback")).to_contain_text("Disagree")
    assert store.analyses["overridden"] in page.url and "pat-" not in page.url
    # The thumbnail is the real CT frame the trace names, rendered from the spool.
    page.wait_for_function("document.querySelector('.thumbs img').naturalWidth === 128")
    shot(page, "03-trace")

    with page.expect_download() as download_info:
        page.locator("#export-pdf").click()
    target = SCREENSHOTS.parent / "downloads" / download_info.value.suggested_filename
    download_info.value.save_as(target)
    assert target.read_bytes().startswith(b"%PDF-")
    page.context.close()


def _flip_root_hash(body: str) -> str:
    """The entry's proof with the first byte of its root hash changed (to a value it did not have)."""

    def flip(match: re.Match[str]) -> str:
        return '"root_hash":"' + ("ff" if match.group(1) == "00" else "00")

    return re.sub(r'"root_hash":"([0-9a-f]{2})', flip, body, count=1)


def test_proof_checked_in_the_browser_and_verify_now(browser: Browser, site: tuple[str, SeededStore]) -> None:
    base, _store = site
    page = sign_in(browser, base, "admin", start="/review/ledger")
    expect(page).to_have_url(base + "/review/ledger")
    page.get_by_label("Entry index").fill("7")
    page.get_by_role("button", name="Check inclusion").click()
    expect(page.locator("#browser-verdict")).to_contain_text("Checked in this browser: verified")
    expect(page.locator("#server-verdict")).to_contain_text("Checked on the server: verified")
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator("#verify-status")).to_contain_text("Ledger verified", timeout=30_000)
    shot(page, "04-ledger-proof-verified")

    # Tamper with what the browser was given: the in-browser check must fail on its own.
    page.route(
        "**/review/api/ledger/entries/7",
        lambda route: route.fulfill(
            response=route.fetch(),
            body=_flip_root_hash(route.fetch().text()),
        ),
    )
    page.get_by_role("button", name="Check inclusion").click()
    expect(page.locator("#browser-verdict")).to_contain_text("failed")
    shot(page, "05-ledger-proof-tampered")
    page.context.close()


def test_radiologist_is_refused_the_ledger(browser: Browser, site: tuple[str, SeededStore]) -> None:
    base, _store = site
    page = sign_in(browser, base, "radiologist", start="/review/ledger")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Ledger")).to_have_count(0)
    shot(page, "06-radiologist-refused")
    page.goto(base + "/review/dashboards")
    expect(page.locator("svg[role=img]")).to_have_count(3)
    shot(page, "07-dashboards")
    page.context.close()

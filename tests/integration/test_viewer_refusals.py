"""Launches the viewer refuses: each ends on an error page that says why and shows nothing of the record."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_viewer_stack import ViewerStack, running_viewer_stack

REPORT_TEXT = "Indeterminate 8 mm right lower lobe nodule"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStack]:
    with running_viewer_stack(tmp_path_factory.mktemp("viewer-refusals")) as running:
        yield running


def _until_callback(stack: ViewerStack, browser: httpx.Client, response: httpx.Response) -> httpx.URL:
    """Follow the EHR's redirects and return the callback URL it sends the browser to (not opened)."""
    while response.status_code in (302, 303):
        location = httpx.URL(str(response.url)).join(response.headers["location"])
        if str(location).startswith(f"{stack.viewer_url}/viewer/callback"):
            return location
        response = browser.get(location)
    raise AssertionError(f"no redirect to the callback: {response.status_code} {response.text[:200]}")


def _start(stack: ViewerStack, browser: httpx.Client, patient: str) -> httpx.Response:
    launch = stack.new_launch(patient, None)
    return browser.get(
        f"{stack.viewer_url}/viewer/reports/{stack.report_id}", params={"iss": stack.iss, "launch": launch}
    )


def _assert_refused(response: httpx.Response, status: int, title: str) -> None:
    assert response.status_code == status, response.text
    assert title in response.text
    assert REPORT_TEXT not in response.text and "viewer-session" not in response.text
    assert "frame-ancestors" in response.headers["content-security-policy"]


def test_wrong_iss_is_refused_before_contacting_it(stack: ViewerStack) -> None:
    response = httpx.get(
        f"{stack.viewer_url}/viewer/reports/{stack.report_id}",
        params={"iss": "http://127.0.0.1:9/fhir", "launch": "x"},
    )
    _assert_refused(response, 403, "This EHR may not launch the viewer")
    _assert_refused(
        httpx.get(f"{stack.viewer_url}/viewer/launch", params={"launch": "x"}), 400, "names no EHR"
    )


def test_bad_or_replayed_state_is_refused(stack: ViewerStack) -> None:
    with httpx.Client() as browser:
        callback = _until_callback(stack, browser, _start(stack, browser, stack.patient))
        forged = browser.get(callback.copy_set_param("state", "forged-state"))
        _assert_refused(forged, 400, "Unknown or expired launch")
        opened = browser.get(callback)
        assert opened.status_code == 200 and REPORT_TEXT in opened.text
        _assert_refused(browser.get(callback), 400, "Unknown or expired launch")  # state is single use


def test_missing_pkce_verifier_is_refused(stack: ViewerStack) -> None:
    with httpx.Client() as browser:
        first = _start(stack, browser, stack.patient)
        state = httpx.URL(first.headers["location"]).params["state"]
        pending = stack.launch_store.take_pending(state)
        assert pending is not None and pending.code_verifier
        stack.launch_store.put_pending(dataclasses.replace(pending, code_verifier=None))
        callback = _until_callback(stack, browser, first)
        _assert_refused(browser.get(callback), 400, "lost its PKCE verifier")


def test_wrong_pkce_verifier_is_refused_by_the_ehr(stack: ViewerStack) -> None:
    with httpx.Client() as browser:
        first = _start(stack, browser, stack.patient)
        state = httpx.URL(first.headers["location"]).params["state"]
        pending = stack.launch_store.take_pending(state)
        assert pending is not None
        stack.launch_store.put_pending(dataclasses.replace(pending, code_verifier="x" * 43))
        callback = _until_callback(stack, browser, first)
        response = browser.get(callback)
    _assert_refused(response, 401, "The EHR refused the sign-in")
    assert "invalid_grant" in response.text


def test_token_for_another_patient_shows_nothing(stack: ViewerStack) -> None:
    with httpx.Client(follow_redirects=True) as browser:
        response = _start(stack, browser, stack.other_patient)
    _assert_refused(response, 403, "This draft is about another patient")


def test_app_context_naming_another_draft_than_the_link_is_refused(stack: ViewerStack) -> None:
    launch = stack.new_launch(stack.patient, f'{{"reportId":"{stack.other_report_id}"}}')
    with httpx.Client(follow_redirects=True) as browser:
        response = browser.get(
            f"{stack.viewer_url}/viewer/reports/{stack.report_id}",
            params={"iss": stack.iss, "launch": launch},
        )
    _assert_refused(response, 403, "launch context does not match")


def test_authorization_error_from_the_ehr_is_shown(stack: ViewerStack) -> None:
    response = httpx.get(
        f"{stack.viewer_url}/viewer/callback", params={"error": "access_denied", "state": "s"}
    )
    _assert_refused(response, 401, "did not authorise")
    assert "access_denied" in response.text


def test_standalone_launch_uses_the_ehr_patient_picker(stack: ViewerStack) -> None:
    with httpx.Client(follow_redirects=True) as browser:
        response = browser.get(f"{stack.viewer_url}/viewer/standalone", params={"report": stack.report_id})
        refused = browser.get(
            f"{stack.viewer_url}/viewer/standalone", params={"report": stack.other_report_id}
        )
    assert response.status_code == 200 and REPORT_TEXT in response.text
    _assert_refused(refused, 403, "another patient")

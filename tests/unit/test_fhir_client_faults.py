"""FhirClient failure classification.

Connection refused and timeouts use real sockets. Server misbehaviour that sekmet-fhir cannot be made
to produce (5xx, 429, non-JSON bodies, hostile or looping ``next`` links) is injected with
``httpx.MockTransport``, which replaces only the network layer of the real client.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from integrations.fhir.client import FhirClient
from integrations.fhir.config import FhirConfig
from integrations.fhir.errors import FhirRequestError, FhirResponseError, FhirUnavailable
from integrations.fhir.server import free_port

BASE = "http://fhir.test/fhir"


def _client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> FhirClient:
    return FhirClient(BASE, transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def _bundle(resources: list[dict], next_url: str | None = None) -> dict:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A socket that accepts connections into its backlog and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_connection_refused_is_unavailable() -> None:
    with FhirClient(f"http://127.0.0.1:{free_port()}/fhir") as client, pytest.raises(FhirUnavailable):
        client.read("Patient", "p1")


def test_timeout_is_unavailable(silent_listener: int) -> None:
    with (
        FhirClient(f"http://127.0.0.1:{silent_listener}/fhir", timeout_s=0.3) as client,
        pytest.raises(FhirUnavailable, match="timed out"),
    ):
        client.read("Patient", "p1")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    with (
        _client(lambda r: httpx.Response(status, text="busy")) as client,
        pytest.raises(FhirUnavailable) as err,
    ):
        client.read("Patient", "p1")
    assert err.value.status == status


def test_client_error_keeps_outcome_but_message_omits_diagnostics() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "name 'Jane Roe' is bad"}],
    }
    with (
        _client(lambda r: httpx.Response(422, json=outcome)) as client,
        pytest.raises(FhirRequestError) as err,
    ):
        client.create({"resourceType": "Patient"})
    assert err.value.status == 422 and err.value.issue_codes == ["invalid"]
    assert err.value.diagnostics == ["name 'Jane Roe' is bad"]
    assert "Jane" not in str(err.value)


def test_non_json_body_is_a_response_error() -> None:
    with (
        _client(lambda r: httpx.Response(200, text="<html>login</html>")) as client,
        pytest.raises(FhirResponseError),
    ):
        client.read("Patient", "p1")


def test_read_of_wrong_type_is_a_response_error() -> None:
    with (
        _client(lambda r: httpx.Response(200, json={"resourceType": "Observation", "id": "p1"})) as client,
        pytest.raises(FhirResponseError),
    ):
        client.read("Patient", "p1")


def test_next_link_to_another_host_is_refused() -> None:
    page = _bundle([{"resourceType": "Patient", "id": "a"}], next_url="http://evil.test/fhir/Patient?page=2")
    with (
        _client(lambda r: httpx.Response(200, json=page)) as client,
        pytest.raises(FhirResponseError, match="outside"),
    ):
        client.search("Patient", {"name": "x"})


def test_repeating_next_link_is_refused() -> None:
    page = _bundle([{"resourceType": "Patient", "id": "a"}], next_url=f"{BASE}/Patient?page=2")
    with (
        _client(lambda r: httpx.Response(200, json=page)) as client,
        pytest.raises(FhirResponseError, match="repeats"),
    ):
        client.search("Patient", {"name": "x"})


def test_search_skips_includes_and_outcomes_and_sends_strict() -> None:
    seen: list[httpx.Request] = []
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "o1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}},
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=body)

    with _client(handler) as client:
        assert [r["id"] for r in client.search("Observation", [("patient", "p1"), ("code", "a,b")])] == ["o1"]
    assert seen[0].headers["Prefer"] == "handling=strict"
    assert seen[0].url.params.get_list("code") == ["a,b"]


def test_create_without_body_reads_location() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert "id" not in json.loads(request.content)
            return httpx.Response(201, headers={"Location": f"{BASE}/Patient/new1/_history/1"})
        assert request.url.path == "/fhir/Patient/new1"
        return httpx.Response(200, json={"resourceType": "Patient", "id": "new1", "meta": {"versionId": "1"}})

    with _client(handler) as client:
        written = client.create({"resourceType": "Patient", "id": "client-side"})
    assert written.created and written.resource_id == "new1" and written.version_id == "1"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.read("Patient", "../metadata"), "FHIR id"),
        (lambda c: c.read("patient", "p1"), "type name"),
        (lambda c: c.update({"resourceType": "Patient"}), "FHIR id"),
        (lambda c: c.create({"resourceType": "Patient"}, if_none_exist=""), "query"),
        (lambda c: c.transaction({"resourceType": "Bundle", "type": "collection"}), "transaction"),
        (lambda c: c.search("Patient", {}, limit=0), "limit"),
    ],
)
def test_bad_arguments_fail_before_any_request(call: Callable[[FhirClient], object], message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    with _client(handler) as client, pytest.raises(ValueError, match=message):
        call(client)


def test_constructor_and_config_validation() -> None:
    with pytest.raises(ValueError, match="http"):
        FhirClient("ftp://x/fhir")
    with pytest.raises(ValueError, match="base_url is not set"):
        FhirClient.from_config(FhirConfig())
    with pytest.raises(TypeError):
        FhirClient(BASE, token="t", auth=httpx.BasicAuth("u", "p"))
    client = FhirClient.from_config(FhirConfig(base_url=BASE + "/", bearer_token="tok", timeout_s=3))
    assert client.base_url == BASE
    client.close()

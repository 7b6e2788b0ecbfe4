"""FhirClient against a real sekmet-fhir server on a localhost port."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import httpx
import pytest

from integrations.fhir.client import FhirClient
from integrations.fhir.errors import FhirRequestError
from integrations.fhir.server import LocalFhirServer


def _uid() -> str:
    return uuid.uuid4().hex[:12]


def _patient(pid: str, family: str = "Testperson") -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
    }


def _observation(pid: str, day: int, value: float, ident: str | None = None) -> dict:
    obs: dict = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"2026-03-{day:02d}",
        "valueQuantity": {
            "value": value,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
    if ident:
        obs["identifier"] = [{"system": "urn:test", "value": ident}]
    return obs


def test_update_creates_then_versions(fhir_client: FhirClient) -> None:
    pid = f"p-{_uid()}"
    first = fhir_client.update(_patient(pid))
    assert first.created and first.version_id == "1"
    second = fhir_client.update({**_patient(pid), "gender": "male"})
    assert not second.created and second.version_id == "2"
    read = fhir_client.read("Patient", pid)
    assert read["gender"] == "male" and read["meta"]["versionId"] == "2" and read["meta"]["lastUpdated"]
    assert fhir_client.vread("Patient", pid, "1")["gender"] == "female"


def test_update_if_match_refuses_stale_version(fhir_client: FhirClient) -> None:
    pid = f"p-{_uid()}"
    fhir_client.update(_patient(pid))
    fhir_client.update(_patient(pid), if_match="1")
    with pytest.raises(FhirRequestError) as err:
        fhir_client.update(_patient(pid), if_match="1")
    assert err.value.status == 412


def test_read_missing_raises_request_error_with_outcome(fhir_client: FhirClient) -> None:
    with pytest.raises(FhirRequestError) as err:
        fhir_client.read("Patient", f"missing-{_uid()}")
    assert err.value.status == 404
    assert err.value.issue_codes == ["not-found"]


def test_conditional_create_is_idempotent(fhir_client: FhirClient) -> None:
    pid = f"p-{_uid()}"
    fhir_client.update(_patient(pid))
    ident = _uid()
    first = fhir_client.create(_observation(pid, 1, 4.1, ident), if_none_exist=f"identifier=urn:test|{ident}")
    again = fhir_client.create(_observation(pid, 1, 4.1, ident), if_none_exist=f"identifier=urn:test|{ident}")
    assert first.created and not again.created
    assert again.resource_id == first.resource_id
    assert len(fhir_client.search("Observation", {"identifier": f"urn:test|{ident}"})) == 1


def test_conditional_create_with_two_matches_is_refused(fhir_client: FhirClient) -> None:
    pid = f"p-{_uid()}"
    fhir_client.update(_patient(pid))
    ident = _uid()
    fhir_client.create(_observation(pid, 1, 4.1, ident))
    fhir_client.create(_observation(pid, 2, 4.2, ident))
    with pytest.raises(FhirRequestError) as err:
        fhir_client.create(_observation(pid, 3, 4.3, ident), if_none_exist=f"identifier=urn:test|{ident}")
    assert err.value.status == 412


def test_search_follows_next_links_and_sorts(fhir_client: FhirClient) -> None:
    pid = f"p-{_uid()}"
    fhir_client.update(_patient(pid))
    for day in (3, 1, 5, 2, 4):
        fhir_client.create(_observation(pid, day, 4.0 + day / 10))
    found = fhir_client.search("Observation", [("patient", pid), ("_sort", "-date"), ("_count", "2")])
    assert [o["effectiveDateTime"] for o in found] == [f"2026-03-0{d}" for d in (5, 4, 3, 2, 1)]
    assert fhir_client.search("Observation", {"patient": pid, "_count": "2"}, limit=3).__len__() == 3


def test_search_page_bound_is_enforced(fhir_server: LocalFhirServer) -> None:
    with FhirClient(fhir_server.base_url, max_pages=2) as client:
        pid = f"p-{_uid()}"
        client.update(_patient(pid))
        for day in range(1, 6):
            client.create(_observation(pid, day, 4.0))
        with pytest.raises(Exception, match="more than 2 pages"):
            client.search("Observation", {"patient": pid, "_count": "2"})


def test_unknown_search_parameter_is_an_error_not_a_wider_search(fhir_client: FhirClient) -> None:
    with pytest.raises(FhirRequestError) as err:
        fhir_client.search("Observation", {"no-such-param": "x"})
    assert err.value.status == 400


def test_transaction_resolves_urn_references(fhir_client: FhirClient) -> None:
    ident = _uid()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:test", "value": ident}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier=urn:test|{ident}",
                },
            },
            {
                "resource": {
                    **_observation("x", 1, 4.0),
                    "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    result = fhir_client.transaction(bundle)
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_id = result["entry"][0]["resource"]["id"]
    assert result["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"


def test_transaction_failure_rolls_back(fhir_client: FhirClient) -> None:
    pid = f"p-{_uid()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}},
            {
                "resource": {"resourceType": "Patient", "id": "x"},
                "request": {"method": "PUT", "url": "Patient/y"},
            },
        ],
    }
    with pytest.raises(FhirRequestError):
        fhir_client.transaction(bundle)
    with pytest.raises(FhirRequestError) as err:
        fhir_client.read("Patient", pid)
    assert err.value.status == 404


def test_private_server_lifecycle_and_bearer_token(tmp_path: Path) -> None:
    server = LocalFhirServer(tmp_path / "srv", bearer_tokens=("s3cret",))
    with server:
        assert server.running
        assert httpx.get(f"{server.base_url}/metadata").json()["fhirVersion"] == "4.0.1"
        assert (tmp_path / "srv" / "sekmet.db").exists()
        with FhirClient(server.base_url) as anonymous, pytest.raises(FhirRequestError) as err:
            anonymous.read("Patient", "any")
        assert err.value.status == 401
        with FhirClient(server.base_url, token="s3cret") as client:
            assert client.update(_patient("tok-1")).created
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/metadata", timeout=2)


def test_logs_name_type_id_and_status_but_no_contents(
    fhir_client: FhirClient, caplog: pytest.LogCaptureFixture
) -> None:
    pid = f"p-{_uid()}"
    with caplog.at_level(logging.DEBUG, logger="integrations.fhir"):
        fhir_client.update(_patient(pid, family="Zyxwvutsrq"))
        fhir_client.search("Patient", {"name": "Zyxwvutsrq"})
    text = caplog.text
    assert f"Patient/{pid}" in text and "201" in text
    assert "Zyxwvutsrq" not in text

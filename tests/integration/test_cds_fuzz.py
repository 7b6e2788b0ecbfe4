"""Schemathesis fuzzing of the CDS Hooks endpoints from their OpenAPI schema: never a 500.

Two apps on one store: JWT verification off (so generated bodies reach validation, prefetch and the
card builders) and on (so generated headers hit the verifier). Every error must be an OperationOutcome.
Generated ``fhirServer`` URLs may point anywhere; the prefetch timeout is cut to keep the run short.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from cds_support import ISSUER, build_app, make_store, seed_report
from hypothesis import HealthCheck, settings

from cds.client_auth.ehr_signer import EhrTokenSigner

_home = Path(tempfile.mkdtemp(prefix="vt-cds-fuzz-"))
_store = make_store(_home)
seed_report(_store, patient_id="fuzz", severity="critical")
_open_app = build_app(_home, _store, None)
_open_app.state.cds.fetcher.timeout_s = 0.2
_signed_app = build_app(_home, _store, EhrTokenSigner.generate(ISSUER, alg="ES384"))

CDS_PATHS = r"^/(cds-services|healthz)"
open_schema = schemathesis.openapi.from_asgi("/openapi.json", _open_app).include(path_regex=CDS_PATHS)
signed_schema = schemathesis.openapi.from_asgi("/openapi.json", _signed_app).include(path_regex=CDS_PATHS)


def _check(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["resourceType"] == "OperationOutcome", response.text[:300]


@open_schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_without_jwt_never_500(case: schemathesis.Case) -> None:
    _check(case)


@signed_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_with_jwt_never_500(case: schemathesis.Case) -> None:
    _check(case)

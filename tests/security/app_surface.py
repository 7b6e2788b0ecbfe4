"""What the security tests share about the API as deployed: its credentials and its route table."""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Engine, inspect, text
from starlette.routing import Route

from cds.client_auth.ehr_signer import EhrTokenSigner
from cds.observability.instrument import instrument_api
from tests.integration.cds_support import Store, build_app
from tests.integration.review_seed import write_local_users

AUDIT_TOKEN = "audit-" + secrets.token_hex(8)
STOW_TOKEN = "stow-" + secrets.token_hex(8)
# The viewer's EHR: a closed local port, so every call the viewer makes to it fails at once (502).
VIEWER_ISS = "http://127.0.0.1:9/fhir"


def build_deployed_app(tmp: Path, store: Store, signer: EhrTokenSigner | None) -> FastAPI:
    """The API as deployed with every optional part mounted: review app (local users), SMART viewer,
    STOW-RS, audit API tokens and /metrics. `signer` None leaves the CDS client JWT check off."""
    app = build_app(
        tmp,
        store,
        signer,
        review_local_users_file=write_local_users(tmp),
        review_secure_cookies=False,
        stow_tokens=[STOW_TOKEN],
        audit_api_tokens=[AUDIT_TOKEN],
        viewer_client_id="veritrace-viewer",
        viewer_allowed_issuers=[VIEWER_ISS],
    )
    app.state.cds.fetcher.timeout_s = 0.2  # the viewer's EHR is a closed port: fail fast
    instrument_api(app, engine=store.engine, ledger_size=store.ledger.size)
    return app


def route_table(app: FastAPI) -> dict[tuple[str, str], APIRoute | Route]:
    """(method, path template) -> route, for every route the app serves (HEAD folded into GET)."""
    found: dict[tuple[str, str], APIRoute | Route] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute | Route) and context.path:
            for method in (context.methods or set()) - {"HEAD"}:
                found[(method, context.path)] = route
    return found


def table_counts(engine: Engine) -> dict[str, int]:
    """Rows per table: what a refused or probed call must leave as it was."""
    with engine.connect() as connection:
        names = inspect(connection).get_table_names()
        return {
            name: int(connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one())
            for name in names
        }

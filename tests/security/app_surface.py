"""What the security tests share about the API as deployed: its credentials and its route table."""

from __future__ import annotations

import secrets

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Engine, inspect, text
from starlette.routing import Route

AUDIT_TOKEN = "audit-" + secrets.token_hex(8)
STOW_TOKEN = "stow-" + secrets.token_hex(8)
# The viewer's EHR: a closed local port, so every call the viewer makes to it fails at once (502).
VIEWER_ISS = "http://127.0.0.1:9/fhir"


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

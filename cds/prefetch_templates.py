"""Rendering prefetch templates (spec §Prefetch tokens) into relative FHIR request URLs.

Only root-level primitive context fields and the four user tokens derived from ``context.userId`` may
be substituted; values are URL-encoded so a crafted id cannot add search parameters that would widen a
patient-scoped query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class UnresolvableTemplate(ValueError):
    """A token in the template has no value in this call's context."""


def token_values(context: Mapping[str, Any]) -> dict[str, str]:
    """Every token this context can fill: ``context.<field>`` and the user id tokens."""
    values = {
        f"context.{name}": str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in context.items()
        if isinstance(value, str | int | float | bool) and value != ""
    }
    user = context.get("userId")
    if isinstance(user, str) and "/" in user:
        resource_type, _, user_id = user.partition("/")
        for token, wanted in USER_TOKENS.items():
            if resource_type == wanted and user_id:
                values[token] = user_id
    return values


def render_template(template: str, context: Mapping[str, Any]) -> str:
    """Fill ``template``'s tokens; raises ``UnresolvableTemplate`` naming the first missing token."""
    values = token_values(context)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise UnresolvableTemplate(f"prefetch token {{{{{name}}}}} has no value in this call")
        return quote(values[name], safe="")

    return TOKEN.sub(substitute, template)


def expected_resource_type(template: str) -> str:
    """``Patient/{{...}}`` -> ``Patient`` (a read); ``Observation?...`` -> ``Bundle`` (a search)."""
    head = template.split("?", 1)[0]
    return "Bundle" if "?" in template or "/" not in head else head.split("/", 1)[0]

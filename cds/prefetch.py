"""Resolve a service's prefetch: use what the EHR sent, fetch what is missing, else 412.

Spec rules applied here (§Providing FHIR Resources): a key the client could not satisfy is absent; a key
with no data is ``null``; the service checks what it got against its templates and fetches the rest
itself when the call carries ``fhirServer`` *and* ``fhirAuthorization``, and answers 412 when it can do
neither. A key holding an OperationOutcome (some EHRs send the error they got), a Bundle with a ``next``
page or a resource of the wrong type counts as missing. A FHIR server that times out or is down does not
fail the call: the key is reported unavailable with a reason, and each service shows no card that would
need it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from cds.hook_request import HookRequest
from cds.operation_outcome import CdsError
from cds.prefetch_templates import UnresolvableTemplate, expected_resource_type, render_template

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 5


@dataclass
class ResolvedPrefetch:
    """Resources per prefetch key (a read gives one, a search its matches, ``null`` none)."""

    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> list[dict[str, Any]] | None:
        """The key's resources, or None when they could not be obtained."""
        return self.resources.get(key)


def _usable(value: Any, template: str) -> list[dict[str, Any]] | None:
    """What a sent prefetch value holds, or None when it must be fetched instead."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return None
    resource_type = value.get("resourceType")
    if resource_type == "OperationOutcome":
        return None
    wanted = expected_resource_type(template)
    if resource_type != wanted:
        return None
    if wanted != "Bundle":
        return [value]
    return _bundle_resources(value)


def _bundle_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    if any(link.get("relation") == "next" for link in bundle.get("link", []) if isinstance(link, dict)):
        return None  # a partial result; the spec forbids next pages in prefetch
    resources: list[dict[str, Any]] = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "OperationOutcome":
            if _has_error(resource):
                return None
            continue
        resources.append(resource)
    return resources


def _has_error(outcome: Mapping[str, Any]) -> bool:
    return any(
        isinstance(issue, dict) and issue.get("severity") in ("error", "fatal")
        for issue in outcome.get("issue", [])
    )


class PrefetchFetcher:
    """Fetches missing prefetch keys from the EHR's FHIR server, concurrently, within ``timeout_s``."""

    def __init__(self, http: httpx.AsyncClient, *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._http = http
        self.timeout_s = timeout_s

    async def resolve(
        self,
        request: HookRequest,
        templates: Mapping[str, str],
        *,
        before_fetch: Callable[[], Awaitable[None]] | None = None,
    ) -> ResolvedPrefetch:
        """Raises ``CdsError(412)`` when data is missing and the call gives no way to fetch it.

        ``before_fetch`` runs once before the first request to the FHIR server, and may refuse the call
        by raising (the hook path settles the token's replay check there, so a replayed call never
        reaches the EHR's FHIR server).
        """
        result = ResolvedPrefetch()
        sent = request.prefetch or {}
        missing: dict[str, str] = {}
        for key, template in templates.items():
            usable = _usable(sent[key], template) if key in sent else None
            if usable is not None:
                result.resources[key] = usable
                continue
            try:
                missing[key] = render_template(template, request.context)
            except UnresolvableTemplate as exc:
                result.unavailable[key] = str(exc)
        if not missing:
            return result
        if request.fhirServer is None or request.fhirAuthorization is None:
            raise CdsError(
                412,
                "incomplete",
                "Prefetch is missing " + ", ".join(sorted(missing)) + " and the call carries no "
                "fhirServer with fhirAuthorization to fetch it",
            )
        if before_fetch is not None:
            await before_fetch()
        base, token = request.fhirServer, request.fhirAuthorization.access_token
        keys = list(missing)
        outcomes = await asyncio.gather(*(self._fetch(base, missing[k], token) for k in keys))
        for key, (resources, reason) in zip(keys, outcomes, strict=True):
            if resources is None:
                result.unavailable[key] = reason
            else:
                result.resources[key] = resources
                result.fetched.append(key)
        return result

    async def _fetch(self, base: str, relative: str, token: str) -> tuple[list[dict[str, Any]] | None, str]:
        try:
            return await asyncio.wait_for(self._fetch_pages(base, relative, token), self.timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            return None, f"FHIR server did not answer within {self.timeout_s:g} s"
        except httpx.TransportError as exc:
            return None, f"FHIR server unreachable ({type(exc).__name__})"

    async def _fetch_pages(
        self, base: str, relative: str, token: str
    ) -> tuple[list[dict[str, Any]] | None, str]:
        headers = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON}
        url = f"{base}/{relative}"
        is_read = expected_resource_type(relative) != "Bundle"
        resources: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            response = await self._http.get(url, headers=headers)
            if is_read and response.status_code in (404, 410):
                return [], ""
            if response.status_code >= 400:
                return None, f"FHIR server answered {response.status_code}"
            try:
                body = response.json()
            except ValueError:
                return None, "FHIR server answered with something that is not JSON"
            if not isinstance(body, dict):
                return None, "FHIR server answered with something that is not a resource"
            if is_read:
                wanted = expected_resource_type(relative)
                if body.get("resourceType") != wanted:
                    return None, f"FHIR server answered {body.get('resourceType')} for a {wanted} read"
                return [body], ""
            if body.get("resourceType") != "Bundle":
                return None, f"FHIR server answered {body.get('resourceType')} for a search"
            page = _bundle_resources({**body, "link": []})
            if page is None:
                return None, "FHIR search returned an error OperationOutcome"
            resources.extend(page)
            next_url = next(
                (link.get("url") for link in body.get("link", []) if link.get("relation") == "next"), None
            )
            if not next_url:
                return resources, ""
            if urlsplit(next_url).netloc != urlsplit(base).netloc:
                return None, "FHIR search next link points to another server"
            url = next_url
        return None, f"FHIR search has more than {MAX_PAGES} pages"

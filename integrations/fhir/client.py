"""Synchronous FHIR R4 REST client used by workers, the demo loader and CDS Hooks prefetch.

It is deliberately small: read, vread, search (following ``next`` links), create (optionally
conditional), update and transaction. Every failure surfaces as one of three typed errors so that a
Celery task can decide between retrying (``FhirUnavailable``) and giving up (``FhirRequestError``,
``FhirResponseError``). Logs carry the interaction, resource type, id and status only; bodies, search
values and server diagnostics can hold patient data and are never logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from integrations.fhir.config import FhirConfig
from integrations.fhir.errors import FhirRequestError, FhirResponseError, FhirUnavailable

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("veritrace.fhir")

FHIR_JSON = "application/fhir+json"
RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR R4 ``id`` datatype
SearchParams = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class WriteResult:
    """A resource as stored by the server after create / update, and the HTTP status it came with.

    ``created`` is False when a conditional create matched an existing resource (200) or an update
    replaced a current version (200).
    """

    resource: dict[str, Any]
    status: int

    @property
    def created(self) -> bool:
        return self.status == 201

    @property
    def resource_id(self) -> str:
        return str(self.resource["id"])

    @property
    def version_id(self) -> str | None:
        meta = self.resource.get("meta") or {}
        return meta.get("versionId")


def check_resource_type(resource_type: str) -> str:
    """Return ``resource_type`` if it looks like a FHIR type name; it becomes a URL path segment."""
    if not isinstance(resource_type, str) or not RESOURCE_TYPE_RE.match(resource_type):
        raise ValueError(f"resource_type must be a FHIR type name like 'Patient', got {resource_type!r}")
    return resource_type


def check_id(resource_id: str, what: str = "resource_id") -> str:
    """Return ``resource_id`` if it is a valid FHIR id ([A-Za-z0-9-.]{1,64}); it becomes a path segment."""
    if not isinstance(resource_id, str) or not ID_RE.match(resource_id):
        raise ValueError(f"{what} must be a FHIR id ([A-Za-z0-9-.], 1 to 64 characters), got {resource_id!r}")
    return resource_id


class FhirClient:
    """A FHIR R4 server at ``base_url`` (``http(s)://host[:port]/path``, no trailing slash needed).

    ``token`` is sent as ``Authorization: Bearer``; ``auth`` takes any ``httpx.Auth`` instead (the
    SMART Backend Services flow in ``smart_backend.py``). ``transport`` lets tests inject faults.
    ``max_pages`` bounds how many ``next`` links one search follows.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | None = None,
        max_pages: int = 50,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if token is not None and auth is not None:
            raise TypeError("pass either token or auth, not both")
        if max_pages < 1:
            raise ValueError(f"max_pages must be at least 1, got {max_pages}")
        self.base_url = base_url.rstrip("/")
        self.max_pages = max_pages
        headers = {"Accept": FHIR_JSON}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(timeout=timeout_s, headers=headers, transport=transport, auth=auth)

    @classmethod
    def from_config(
        cls,
        config: FhirConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | None = None,
    ) -> FhirClient:
        """Build from ``FhirConfig``; raises ``ValueError`` when no ``base_url`` is configured."""
        if not config.base_url:
            raise ValueError("FhirConfig.base_url is not set: no FHIR server is configured")
        if auth is None and config.smart is not None:
            from integrations.fhir.smart_backend import shared_smart_auth

            auth = shared_smart_auth(config.smart)
        return cls(
            config.base_url,
            timeout_s=config.timeout_s,
            token=config.bearer_token,
            transport=transport,
            auth=auth,
        )

    # ---------------- interactions ----------------

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """``GET [base]/[type]/[id]``; 404 / 410 raise ``FhirRequestError``."""
        path = f"{check_resource_type(resource_type)}/{check_id(resource_id)}"
        response = self._send("GET", path, what=f"read {path}")
        return self._resource(response, resource_type, what=f"read {path}")

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        """``GET [base]/[type]/[id]/_history/[vid]``: one exact version, e.g. of cited evidence."""
        version = check_id(version_id, "version_id")
        path = f"{check_resource_type(resource_type)}/{check_id(resource_id)}/_history/{version}"
        response = self._send("GET", path, what=f"vread {path}")
        return self._resource(response, resource_type, what=f"vread {path}")

    def search(
        self, resource_type: str, params: SearchParams, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """``GET [base]/[type]?params``: the matching resources of every page, in server order.

        Asks for ``Prefer: handling=strict`` so that a search parameter the server does not know is
        an error (400) rather than silently dropped, which would widen a patient-scoped query.
        Follows ``next`` links on the same server, up to ``max_pages`` pages; more raises
        ``FhirResponseError``. ``limit`` stops early after that many matches.
        """
        check_resource_type(resource_type)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = list(params.items()) if isinstance(params, Mapping) else list(params)
        what = f"search {resource_type}"
        response = self._send(
            "GET", resource_type, what=what, params=query, headers={"Prefer": "handling=strict"}
        )
        matches: list[dict[str, Any]] = []
        seen_urls: set[str] = set()
        for page in range(1, self.max_pages + 1):
            bundle = self._json(response, what=what)
            if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "searchset":
                raise FhirResponseError(
                    f"{what}: expected a searchset Bundle, got {bundle.get('resourceType')}"
                )
            matches.extend(_matches(bundle, resource_type, what))
            if limit is not None and len(matches) >= limit:
                return matches[:limit]
            next_url = _link(bundle, "next")
            if next_url is None:
                return matches
            if page == self.max_pages:
                break
            self._check_same_server(next_url, what)
            if next_url in seen_urls:
                raise FhirResponseError(f"{what}: the server's next link repeats itself")
            seen_urls.add(next_url)
            response = self._send(
                "GET", next_url, what=f"{what} page {page + 1}", headers={"Prefer": "handling=strict"}
            )
        raise FhirResponseError(
            f"{what}: more than {self.max_pages} pages; narrow the query or raise max_pages"
        )

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> WriteResult:
        """``POST [base]/[type]``; with ``if_none_exist`` (a query such as ``identifier=sys|val``) a
        conditional create: an existing single match is returned with status 200 and nothing is
        written, two or more matches raise ``FhirRequestError`` (412). A client-side ``id`` is
        dropped, as R4 servers ignore it on create."""
        resource_type = _resource_type_of(resource)
        body = {k: v for k, v in resource.items() if k != "id"}
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_none_exist is not None:
            if not if_none_exist or "=" not in if_none_exist:
                raise ValueError(
                    f"if_none_exist must be a query like 'identifier=system|value', got {if_none_exist!r}"
                )
            headers["If-None-Exist"] = if_none_exist
        what = f"create {resource_type}"
        response = self._send("POST", resource_type, what=what, content=_dumps(body), headers=headers)
        return WriteResult(self._written(response, resource_type, what), response.status_code)

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> WriteResult:
        """``PUT [base]/[type]/[id]`` (creates the resource when the server allows client ids).

        ``if_match`` is a version id: the update is refused (412) unless it is still current.
        """
        resource_type = _resource_type_of(resource)
        path = f"{resource_type}/{check_id(str(resource.get('id', '')))}"
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = f'W/"{check_id(if_match, "if_match")}"'
        what = f"update {path}"
        response = self._send("PUT", path, what=what, content=_dumps(resource), headers=headers)
        return WriteResult(self._written(response, resource_type, what), response.status_code)

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """``POST [base]`` a ``transaction`` (all or nothing) or ``batch`` Bundle; returns the
        ``transaction-response`` / ``batch-response`` Bundle."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ValueError("transaction() takes a Bundle resource")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise ValueError(f"Bundle.type must be 'transaction' or 'batch', got {kind!r}")
        what = f"{kind} of {len(bundle.get('entry') or [])} entries"
        response = self._send(
            "POST", "", what=what, content=_dumps(bundle), headers={"Content-Type": FHIR_JSON}
        )
        result = self._json(response, what=what)
        if result.get("resourceType") != "Bundle" or result.get("type") != f"{kind}-response":
            raise FhirResponseError(
                f"{what}: expected a {kind}-response Bundle, got {result.get('resourceType')}"
            )
        return result

    # ---------------- plumbing ----------------

    def _send(self, method: str, path_or_url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        url = (
            path_or_url
            if path_or_url.startswith(("http://", "https://"))
            else f"{self.base_url}/{path_or_url}"
        )
        url = url.rstrip("/")
        # A CLIENT span in the caller's trace: method, resource type and status only (ids and search
        # values in the URL can identify a patient).
        resource_type = self._resource_type_of(url)
        with _tracer.start_as_current_span(
            f"FHIR {method} {resource_type}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "fhir.resource_type": resource_type},
        ) as span:
            headers: dict[str, str] = dict(kwargs.pop("headers", None) or {})
            propagate.inject(headers)  # W3C traceparent, so a tracing EHR can continue the trace
            try:
                response = self._http.request(method, url, headers=headers, **kwargs)
            except httpx.TimeoutException as exc:
                log.warning("FHIR %s: timed out", what)
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise FhirUnavailable(f"FHIR {what}: timed out") from exc
            except httpx.TransportError as exc:
                log.warning("FHIR %s: %s", what, type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise FhirUnavailable(f"FHIR {what}: {type(exc).__name__}") from exc
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(Status(StatusCode.ERROR))
        status = response.status_code
        if status < 300:
            log.info("FHIR %s -> %d", what, status)
            return response
        log.warning("FHIR %s -> %d", what, status)
        if status >= 500 or status == 429:
            raise FhirUnavailable(f"FHIR {what}: HTTP {status}", status=status)
        if 400 <= status < 500:
            outcome = _outcome(response)
            codes = (
                ", ".join(str(i.get("code")) for i in (outcome or {}).get("issue", []))
                or "no OperationOutcome"
            )
            raise FhirRequestError(f"FHIR {what}: HTTP {status} ({codes})", status=status, outcome=outcome)
        raise FhirResponseError(f"FHIR {what}: unexpected HTTP {status}")

    def _resource_type_of(self, url: str) -> str:
        """The first path segment after the base URL if it is a type name, else "system" (batch, search)."""
        path = urlsplit(url).path
        base_path = urlsplit(self.base_url).path
        first = path[len(base_path) :].lstrip("/").split("/", 1)[0] if path.startswith(base_path) else ""
        return first if RESOURCE_TYPE_RE.match(first) else "system"

    def _json(self, response: httpx.Response, *, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FhirResponseError(f"FHIR {what}: response body is not JSON") from exc
        if not isinstance(body, dict):
            raise FhirResponseError(f"FHIR {what}: response body is not a JSON object")
        return body

    def _resource(self, response: httpx.Response, resource_type: str, *, what: str) -> dict[str, Any]:
        body = self._json(response, what=what)
        if body.get("resourceType") != resource_type:
            raise FhirResponseError(f"FHIR {what}: expected {resource_type}, got {body.get('resourceType')}")
        return body

    def _written(self, response: httpx.Response, resource_type: str, what: str) -> dict[str, Any]:
        """The stored resource: the body when the server returned one, else a read of ``Location``."""
        if response.content.strip():
            return self._resource(response, resource_type, what=what)
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        if not location:
            raise FhirResponseError(f"FHIR {what}: no body and no Location header")
        segments = urlsplit(location).path.split("/")
        if "_history" in segments:
            segments = segments[: segments.index("_history")]
        return self.read(resource_type, segments[-1])

    def _check_same_server(self, url: str, what: str) -> None:
        """Refuse paging links that leave our server: they would carry our credentials elsewhere."""
        base, target = urlsplit(self.base_url), urlsplit(url)
        if (target.scheme, target.netloc) != (base.scheme, base.netloc) or not target.path.startswith(
            base.path
        ):
            raise FhirResponseError(
                f"FHIR {what}: next link points outside {base.scheme}://{base.netloc}{base.path}"
            )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _resource_type_of(resource: dict[str, Any]) -> str:
    if not isinstance(resource, dict):
        raise TypeError(f"resource must be a dict, got {type(resource).__name__}")
    return check_resource_type(resource.get("resourceType", ""))


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _outcome(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation and isinstance(link.get("url"), str):
            url: str = link["url"]
            return url
    return None


def _matches(bundle: dict[str, Any], resource_type: str, what: str) -> list[dict[str, Any]]:
    """Entries with ``search.mode = match`` (or no mode, as some servers omit it), excluding
    ``_include``d resources and warning OperationOutcomes."""
    out: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        mode = (entry.get("search") or {}).get("mode")
        if mode in ("include", "outcome") or (
            mode is None and resource.get("resourceType") == "OperationOutcome"
        ):
            continue
        if resource.get("resourceType") != resource_type:
            raise FhirResponseError(f"FHIR {what}: a match is a {resource.get('resourceType')}")
        out.append(resource)
    return out

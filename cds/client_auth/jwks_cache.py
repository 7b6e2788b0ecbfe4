"""JWK Sets fetched from allow-listed ``jku`` URLs, cached, and re-fetched when a key id is unknown.

Key rotation at an EHR publishes a new key before signing with it, so an unknown ``kid`` triggers one
re-fetch of that URL; ``min_refetch_s`` bounds how often a stream of tokens with made-up key ids can make
us call the EHR. Concurrent callers share one fetch per URL.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx


class JwksUnavailable(Exception):
    """The JWK Set URL could not be fetched or did not hold a JWK Set."""


@dataclass
class _Entry:
    keys: dict[str, dict[str, Any]]
    fetched_at: float


def keys_by_kid(jwks: Any) -> dict[str, dict[str, Any]]:
    """Public signing keys of a JWK Set by ``kid``; symmetric and private keys are dropped."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JwksUnavailable("not a JWK Set")
    found: dict[str, dict[str, Any]] = {}
    for key in jwks["keys"]:
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str):
            continue
        if key.get("kty") not in ("EC", "RSA") or "d" in key or key.get("use", "sig") != "sig":
            continue
        found[key["kid"]] = key
    return found


class JwksCache:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        ttl_s: float = 3600.0,
        min_refetch_s: float = 10.0,
        timeout_s: float = 3.0,
    ) -> None:
        self._http = http
        self.ttl_s = ttl_s
        self.min_refetch_s = min_refetch_s
        self.timeout_s = timeout_s
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, url: str, kid: str) -> dict[str, Any] | None:
        """The JWK with ``kid`` at ``url``, fetching when absent, expired, or (rotation) kid unknown."""
        entry = self._entries.get(url)
        now = time.monotonic()
        if entry is not None and now - entry.fetched_at < self.ttl_s and kid in entry.keys:
            return entry.keys[kid]
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = self._entries.get(url)
            now = time.monotonic()
            fresh = entry is not None and now - entry.fetched_at < self.ttl_s
            if entry is not None and fresh and kid in entry.keys:
                return entry.keys[kid]
            if entry is not None and fresh and now - entry.fetched_at < self.min_refetch_s:
                return None  # fetched a moment ago and the kid was not there
            entry = _Entry(await self._fetch(url), time.monotonic())
            self._entries[url] = entry
            return entry.keys.get(kid)

    async def _fetch(self, url: str) -> dict[str, dict[str, Any]]:
        try:
            response = await self._http.get(url, timeout=self.timeout_s, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"JWK Set fetch failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise JwksUnavailable(f"JWK Set URL answered {response.status_code}")
        try:
            return keys_by_kid(response.json())
        except ValueError as exc:
            raise JwksUnavailable("JWK Set URL did not answer JSON") from exc

"""OpenID Connect Discovery 1.0: from an issuer to the URL of its signing keys.

Primitives:
- `discovery_url(issuer)`: `{issuer}/.well-known/openid-configuration`, a terminating `/` of the issuer removed
  first (§4.1).
- `Discovery`: the issuer's provider configuration as this process last validated it. `jwks_uri(max_age_s)`
  re-fetches the document when the one held is older than `max_age_s` (or was never fetched) and returns the
  `jwks_uri` to fetch keys from. A document is used only if its `issuer` equals the configured issuer exactly
  (§4.3: otherwise "the data contained in the response MUST NOT be used") and its `jwks_uri` is an absolute
  http(s) URL — https whenever the issuer is (no downgrade). A failed fetch keeps the last good `jwks_uri`
  (recorded as the discovery endpoint going down); with none yet, it raises `ProviderError`.
"""

from __future__ import annotations

import time
from typing import Callable
from urllib.parse import urlsplit

from gatewatch.edge.policies.provider import Http, ProviderError, ProviderHealth
from gatewatch.telemetry.names import ProviderFailure

WELL_KNOWN = "/.well-known/openid-configuration"
MAX_DISCOVERY_BYTES = 256 * 1024


def discovery_url(issuer: str) -> str:
    return (issuer[:-1] if issuer.endswith("/") else issuer) + WELL_KNOWN


class Discovery:
    def __init__(self, issuer: str, http: Http, timeout_s: float, health: ProviderHealth | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.issuer = issuer
        self.url = discovery_url(issuer)
        self.http = http
        self.timeout_s = timeout_s
        self.health = health
        self._mono = monotonic
        self.jwks_uri_value: str | None = None  # from the last document that validated
        self.fetched_at: float | None = None
        self.fetches = 0

    async def jwks_uri(self, max_age_s: float, trace_id: int = 0) -> str:
        if self.fetched_at is None or self._mono() - self.fetched_at >= max_age_s:
            try:
                await self._fetch()
            except ProviderError as err:
                if self.health is not None:
                    self.health.down(err, self.url, trace_id)
                if self.jwks_uri_value is None:
                    raise
                return self.jwks_uri_value  # stale-if-error: the last validated document's keys URL
            if self.health is not None:
                self.health.up(self.url, trace_id)
        assert self.jwks_uri_value is not None
        return self.jwks_uri_value

    async def _fetch(self) -> None:
        self.fetches += 1
        doc = await self.http.get_json(self.url, self.timeout_s, MAX_DISCOVERY_BYTES)
        if doc.get("issuer") != self.issuer:  # §4.3: exact match, no normalisation
            raise ProviderError(ProviderFailure.ISSUER_MISMATCH,
                                f"the document names issuer {str(doc.get('issuer'))[:200]!r}, not {self.issuer!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not _absolute(uri):
            raise ProviderError(ProviderFailure.INVALID, "the document has no absolute http(s) jwks_uri")
        if self.issuer.startswith("https://") and not uri.startswith("https://"):
            raise ProviderError(ProviderFailure.INVALID, "an https issuer's jwks_uri must be https")
        self.jwks_uri_value, self.fetched_at = uri, self._mono()


def _absolute(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and url.isprintable()

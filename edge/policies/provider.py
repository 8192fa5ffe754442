"""Calls to identity providers (OIDC discovery, JWKS, RFC 7662 introspection): the HTTP exchange, its failures in
a closed vocabulary, the retry backoff, and each endpoint's availability as this process sees it.

Primitives:
- `ProviderError(failure, detail, tls)`: a failed call; `failure` is a `ProviderFailure`, `tls` the `TlsFailure`
  when the handshake failed (unknown CA, name mismatch, expired ...).
- `Http(session, context, server_name)`: one provider's transport — the process's aiohttp session with the policy's
  `tls` settings (the upstream TLS model: `ca_file`, `server_name`, `verify`, `client_cert`/`client_key`,
  `min_version`). `get_json` / `post_form` run the whole exchange (connect, TLS, request, body) within
  `timeout_s`, never follow a redirect, cap the body, and return a JSON object or raise `ProviderError`.
- `Backoff(initial_s, max_s, rng)`: after n consecutive failures wait `min(max_s, initial_s * 2**(n-1))` scaled
  by a random factor in [0.5, 1] ("equal jitter"): bounded, and processes that failed together spread out.
- `ProviderHealth`: one endpoint's state, shared by every policy using it and kept across reloads (as the
  rate-limit store's `StoreHealth`): each transition is logged once (WARNING down, INFO back), set in
  `gatewatch_auth_provider_up{provider,endpoint}` and recorded as a `gatewatch.auth.provider.transition` event
  naming the request that ran into it; while down, `event_id` names the outage so affected requests can say so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote_plus, urlencode

import aiohttp

from gatewatch.io.tls import failure_of
from gatewatch.telemetry.context import new_event_id
from gatewatch.telemetry.names import Attr, AuthEndpoint, Event, ProviderFailure, StoreState, TlsFailure

log = logging.getLogger("gatewatch.policies.auth")


class ProviderError(Exception):
    def __init__(self, failure: ProviderFailure, detail: str, tls: TlsFailure | None = None):
        super().__init__(detail)
        self.failure, self.detail, self.tls = failure, detail, tls


@dataclass(frozen=True)
class Http:
    session: Callable[[], aiohttp.ClientSession]  # the process's session (created lazily by PolicyResources)
    context: ssl.SSLContext | None = None  # the policy's `tls` context; None: verified against the system's CAs
    server_name: str | None = None  # SNI and the name the certificate must carry; None: the URL's host

    async def get_json(self, url: str, timeout_s: float, max_bytes: int) -> dict:
        return _json(await self._exchange("GET", url, timeout_s, max_bytes, {"Accept": "application/json"}))

    async def post_form(self, url: str, form: dict[str, str], timeout_s: float, max_bytes: int,
                        basic: tuple[str, str] | None = None) -> dict:
        """POST `form` as application/x-www-form-urlencoded. `basic`: (client_id, secret) as client_secret_basic
        (RFC 6749 §2.3.1: each form-urlencoded, then HTTP Basic; RFC 7662 §2.1)."""
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        if basic is not None:
            pair = f"{quote_plus(basic[0])}:{quote_plus(basic[1])}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return _json(await self._exchange("POST", url, timeout_s, max_bytes, headers, urlencode(form)))

    async def _exchange(self, method: str, url: str, timeout_s: float, max_bytes: int, headers: dict,
                        data: str | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout_s):  # everything, the body included: a trickling answer is slow too
                async with self.session().request(
                        method, url, headers=headers, data=data, allow_redirects=False,
                        ssl=self.context if self.context is not None else True, server_hostname=self.server_name) as r:
                    if r.status != 200:
                        raise ProviderError(ProviderFailure.HTTP_STATUS, f"status {r.status}")
                    if (r.content_length or 0) > max_bytes:
                        raise ProviderError(ProviderFailure.TOO_LARGE, f"{r.content_length} bytes")
                    body = bytearray()
                    async for chunk in r.content.iter_any():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ProviderError(ProviderFailure.TOO_LARGE, f"over {max_bytes} bytes")
                    return bytes(body)
        except TimeoutError:
            raise ProviderError(ProviderFailure.TIMEOUT, f"no answer within {timeout_s}s") from None
        except aiohttp.ClientConnectorCertificateError as e:
            kind, msg = failure_of(e.certificate_error)
            raise ProviderError(ProviderFailure.TLS_ERROR, msg.replace("upstream", "provider"), kind) from None
        except aiohttp.ClientSSLError as e:
            err = e.os_error if isinstance(e.os_error, ssl.SSLError) else None
            kind, msg = failure_of(err) if err is not None else (TlsFailure.HANDSHAKE_FAILED, str(e))
            raise ProviderError(ProviderFailure.TLS_ERROR, msg.replace("upstream", "provider"), kind) from None
        except aiohttp.ClientConnectorError as e:
            raise ProviderError(ProviderFailure.CONNECT_ERROR, str(e.os_error) or type(e).__name__) from None
        except (aiohttp.ClientError, ValueError, OSError) as e:
            raise ProviderError(ProviderFailure.BAD_RESPONSE, f"{type(e).__name__}: {e}") from None


def _json(body: bytes) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ProviderError(ProviderFailure.NOT_JSON, "the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise ProviderError(ProviderFailure.NOT_JSON, "the answer is not a JSON object")
    return doc


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None):
        self.initial_s, self.max_s = initial_s, max_s
        self.rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        base = min(self.max_s, self.initial_s * 2 ** min(max(failures, 1) - 1, 30))
        return base * (0.5 + 0.5 * self.rng.random())


class ProviderHealth:
    def __init__(self, provider: str, endpoint: AuthEndpoint, metrics: Any = None, telemetry: Any = None):
        self.provider = safe_url(provider)
        self.endpoint = endpoint
        self._metrics = metrics
        self._telemetry = telemetry
        self.available = True  # last known state, to record transitions once
        self.event_id: str | None = None  # the outage in force
        self.transitions = 0
        if metrics is not None:
            metrics.auth_provider_up.labels(self.provider, endpoint.value).set(1)

    def down(self, err: ProviderError, url: str, trace_id: int = 0) -> None:
        if not self.available:
            return
        self.available = False
        self.event_id = new_event_id()
        log.warning("identity provider %s: %s endpoint %s unavailable (%s: %s)", self.provider,
                    self.endpoint.value, safe_url(url), err.failure.value, err.detail)
        self._transition(StoreState.UP, StoreState.DOWN, err.failure.value, url, trace_id, "WARN", err.tls)

    def up(self, url: str, trace_id: int = 0) -> None:
        if self.available:
            return
        self.available = True
        log.info("identity provider %s: %s endpoint %s available again", self.provider, self.endpoint.value,
                 safe_url(url))
        self._transition(StoreState.DOWN, StoreState.UP, "reachable", url, trace_id, "INFO", None)
        self.event_id = None

    def _transition(self, old: StoreState, new: StoreState, why: str, url: str, trace_id: int, severity: str,
                    tls: TlsFailure | None) -> None:
        self.transitions += 1
        if self._metrics is not None:
            self._metrics.auth_provider_up.labels(self.provider, self.endpoint.value).set(
                1 if new is StoreState.UP else 0)
        if self._telemetry is None:
            return
        attrs = {Attr.AUTH_PROVIDER: self.provider, Attr.AUTH_ENDPOINT: self.endpoint.value,
                 Attr.AUTH_URL: safe_url(url), Attr.AUTH_PROVIDER_FROM: old.value,
                 Attr.AUTH_PROVIDER_TO: new.value, Attr.DECISION_REASON: why,
                 Attr.EVENT_ID: self.event_id or "",  # the outage's id, down and up
                 Attr.EVENT_TRACE_IDS: [f"{trace_id:032x}"] if trace_id else []}
        if tls is not None:
            attrs[Attr.TLS_FAILURE] = tls.value
        self._telemetry.event(Event.AUTH_PROVIDER, f"identity provider {self.provider} {self.endpoint.value}: "
                              f"{old.value} -> {new.value} ({why})", attrs, trace_id or None, None, severity)


def safe_url(url: str) -> str:
    """A URL without userinfo (never log a password) and without its query (never log a token)."""
    scheme, sep, rest = url.partition("://")
    rest = rest.rpartition("@")[2] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}{sep}{rest.split('?', 1)[0].split('#', 1)[0]}"

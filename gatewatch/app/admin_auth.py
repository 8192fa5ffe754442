"""Who may use the admin listener: the bearer token (RFC 6750) and the browser checks, as one aiohttp middleware.

- With a token configured (`admin.token_file` or `admin.token_env`), every POST needs `Authorization: Bearer
  <token>`; with `admin.protect_reads`, every GET too. /healthz and /readyz always stay open (probes carry no
  credentials) and so do the admin page's static files (they hold no data: the page's own requests carry the
  token). Compared in constant time (`hmac.compare_digest`).
- Answers per RFC 6750 §3 and §3.1: no Bearer credentials → 401 with `WWW-Authenticate: Bearer realm=...` and no
  error code; credentials that are not one b64token (§2.1), or several Authorization headers → 400
  `invalid_request`; a well-formed wrong token → 401 `invalid_token`. Each refusal counts in
  `gatewatch_admin_auth_failures_total{reason}`.
- Browsers (token or not): a POST whose `Origin` is not this listener, or marked `Sec-Fetch-Site: cross-site` /
  `same-site`, is refused 403 (a web page cannot make a browser drain or reload, CSRF); on a loopback address, a
  request whose Host is not a loopback name or address is refused 403 (DNS rebinding would otherwise let a web
  page read the admin through the browser).
- A rotated token file is picked up on the next request (its modification time is checked; a file that became
  unreadable keeps the previous token, with a warning).
"""

from __future__ import annotations

import hmac
import logging
import os

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from gatewatch.config import BEARER_TOKEN, AdminConfig, is_loopback_host
from gatewatch.telemetry.names import AdminAuthFailure, Label, Metric

log = logging.getLogger("gatewatch.admin")
REALM = "gatewatch-admin"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/admin.js", "/admin.css", "/favicon.svg"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AdminAuth:
    def __init__(self, cfg: AdminConfig, registry: CollectorRegistry):
        self.cfg = cfg
        self._mtime: int | None = None
        self._token = cfg.token()
        if cfg.token_file is not None:
            self._mtime = _mtime(cfg.token_file)
        self.loopback_only = is_loopback_host(_split_host(cfg.address))
        self.failures = Counter(Metric.ADMIN_AUTH_FAILURES, "Admin requests refused: no, malformed or wrong bearer "
                                "token, or a cross-site browser request; by reason.", [Label.REASON], registry=registry)
        for reason in AdminAuthFailure:
            self.failures.labels(reason.value)

    @property
    def token_set(self) -> bool:
        return self._token is not None

    def token(self) -> str | None:
        path = self.cfg.token_file
        if path is not None:
            mtime = _mtime(path)
            if mtime != self._mtime:
                try:
                    self._token = self.cfg.token()
                    self._mtime = mtime
                except ValueError as err:
                    log.warning("admin token: %s; keeping the previous token", err)
        return self._token

    def needs_token(self, request: web.Request) -> bool:
        if request.path in OPEN_PATHS or self._token is None:
            return False
        return request.method not in READ_METHODS or self.cfg.protect_reads

    def refuse(self, request: web.Request) -> web.Response | None:
        """The answer refusing this request, or None when it may go on."""
        if self.loopback_only and not is_loopback_host(_split_host(request.host)):
            return self._refused(403, AdminAuthFailure.CROSS_SITE,
                                 f"Host {request.host!r} is not a loopback name or address (DNS rebinding?)")
        if request.method not in READ_METHODS:
            origin = request.headers.get("Origin")
            fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
            # the origin's host[:port] against Host: its scheme may differ behind a TLS-terminating proxy
            if (origin is not None and origin.partition("://")[2] != request.host) or \
                    fetch_site not in ("same-origin", "none"):
                return self._refused(403, AdminAuthFailure.CROSS_SITE,
                                     "a browser request from another origin may not change this process")
        if not self.needs_token(request):
            return None
        expected = self.token()
        values = request.headers.getall("Authorization", [])
        if len(values) > 1:
            return self._refused(400, AdminAuthFailure.MALFORMED, "several Authorization headers",
                                 "invalid_request")
        scheme, _, credentials = (values[0] if values else "").strip().partition(" ")
        if scheme.lower() != "bearer":  # RFC 9110 §11.1: the scheme is case-insensitive
            return self._refused(401, AdminAuthFailure.MISSING, "this needs the admin token: "
                                 "Authorization: Bearer <token>")
        credentials = credentials.strip()
        if not BEARER_TOKEN.fullmatch(credentials):  # RFC 6750 §2.1 b64token
            return self._refused(400, AdminAuthFailure.MALFORMED, "the bearer token is not one RFC 6750 b64token",
                                 "invalid_request")
        if expected is None or not hmac.compare_digest(credentials.encode(), expected.encode()):
            return self._refused(401, AdminAuthFailure.INVALID, "the bearer token is not the admin token",
                                 "invalid_token")
        return None

    def _refused(self, status: int, reason: AdminAuthFailure, message: str, error: str | None = None) -> web.Response:
        self.failures.labels(reason.value).inc()
        headers = {}
        if status in (400, 401):
            challenge = f'Bearer realm="{REALM}"'
            if error:
                challenge += f', error="{error}", error_description="{message}"'
            headers["WWW-Authenticate"] = challenge
        return web.json_response({"error": message, "reason": reason.value}, status=status, headers=headers)


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _split_host(host_port: str) -> str:
    """The host of `host:port`, `[v6]:port`, `host` or `[v6]`."""
    if host_port.startswith("["):
        return host_port[1:].partition("]")[0]
    return host_port.rpartition(":")[0] if host_port.count(":") == 1 else host_port



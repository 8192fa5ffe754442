"""`cors`: Cross-Origin Resource Sharing, decided at the gateway.

- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered locally: 204 with the
  allow headers when origin, method and requested headers are allowed (verdict allow, reason cors.preflight,
  outcome `preflight`), else refused (cors.origin_denied, 403). The upstream never sees preflights.
- A request with an allowed `Origin` continues and its response gets `Access-Control-Allow-Origin` (and
  credentials / exposed headers as configured); a disallowed origin is refused with 403 (cors.origin_denied).
- A request without `Origin` is not a CORS request: allowed (cors.no_origin).
- Shadow mode records the verdicts and changes nothing: no local preflight answers, no added headers.
"""

from __future__ import annotations

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.telemetry.names import Outcome, PolicyReason as R, Verdict


class CorsPolicy:
    type = "cors"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.any_origin = "*" in cfg.allow_origins
        self.origins = frozenset(cfg.allow_origins)
        self.methods = frozenset(m.upper() for m in cfg.allow_methods)
        self.headers = frozenset(h.lower() for h in cfg.allow_headers)

    def _origin_ok(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def _allow_origin(self, origin: str) -> list[tuple[str, str]]:
        if self.any_origin and not self.cfg.allow_credentials:
            out = [("Access-Control-Allow-Origin", "*")]
        else:
            out = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if self.cfg.allow_credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        return out

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        origin = req.head.header("origin")
        if origin is None:
            return allow(self, R.CORS_NO_ORIGIN.value)
        wanted_method = req.head.header("access-control-request-method")
        if req.head.method == "OPTIONS" and wanted_method is not None:
            return self._preflight(req, origin, wanted_method)
        if not self._origin_ok(origin):
            return deny(self, R.CORS_ORIGIN_DENIED.value, 403, Outcome.DENIED_POLICY, "this origin is not allowed")
        if self.shadow:
            return allow(self, R.CORS_ALLOWED.value)
        req.response_headers.extend(self._allow_origin(origin))
        if self.cfg.expose_headers:
            req.response_headers.append(("Access-Control-Expose-Headers", ", ".join(self.cfg.expose_headers)))
        return allow(self, R.CORS_ALLOWED.value)

    def _preflight(self, req: PolicyRequest, origin: str, method: str) -> PolicyVerdict:
        asked = req.head.header("access-control-request-headers") or ""
        asked_headers = [h.strip().lower() for h in asked.split(",") if h.strip()]
        if (not self._origin_ok(origin) or method.upper() not in self.methods
                or any(h not in self.headers for h in asked_headers)):
            return deny(self, R.CORS_ORIGIN_DENIED.value, 403, Outcome.DENIED_POLICY,
                        "this cross-origin request is not allowed")
        if self.shadow:  # shadow mode changes nothing the client sees: the preflight goes where it went before
            return allow(self, R.CORS_PREFLIGHT.value)
        headers = [*self._allow_origin(origin),
                   ("Access-Control-Allow-Methods", ", ".join(sorted(self.methods))),
                   ("Access-Control-Max-Age", str(self.cfg.max_age_s))]
        if asked_headers:
            headers.append(("Access-Control-Allow-Headers", ", ".join(asked_headers)))
        return PolicyVerdict(self.name, self.type, Verdict.ALLOW, R.CORS_PREFLIGHT.value, {}, True, 204,
                             Outcome.PREFLIGHT, tuple(headers))

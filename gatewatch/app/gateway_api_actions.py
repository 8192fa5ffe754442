"""What a matched HTTPRoute request does, for `gatewatch import gateway-api` (gatewatch.app.gateway_api): its
backendRefs become pools and the route's `upstream`, weighted `upstreams` or `mirror`; its filters become `headers`
and `path_rewrite` policies or `rewrite.strip_prefix`. Whatever has no faithful equivalent is reported as
`unsupported` at its field path; nothing is dropped silently.

Primitives: `Doc` (one HTTPRoute being read: where its problems and warnings go), `target(...)`, `filters(...)`,
`config_name(...)`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

K8S_NAME = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"  # RFC 1123 label: Service and namespace names
HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 §5.6.2 token


class Doc:
    """One HTTPRoute being read: where problems are reported."""

    def __init__(self, label: str, obj: dict, problems: list[str], warnings: list[str]):
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        self.name = str(meta.get("name") or "")
        self.namespace = str(meta.get("namespace") or "default")
        self.created = _timestamp(meta.get("creationTimestamp"))
        self.where = f"{label} (HTTPRoute {self.namespace}/{self.name or '?'})"
        self._problems, self._warnings = problems, warnings

    def error(self, path: str, message: str) -> None:
        self._problems.append(f"{self.where} {path}: {message}")

    def unsupported(self, path: str, why: str) -> None:
        self.error(path, f"unsupported: {why}")

    def warn(self, path: str, message: str) -> None:
        self._warnings.append(f"{self.where} {path}: {message}")


def _timestamp(value: Any) -> str:
    """creationTimestamp as sortable UTC ISO text ("" when absent; YAML may have parsed it into a datetime)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if value.tzinfo is None:  # Kubernetes writes UTC (RFC 3339 with Z); a bare time is read as UTC too
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def config_name(*parts: str) -> str:
    """A config name (NAME_PATTERN, at most 63 characters) from Kubernetes names; long ones end in a hash."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", "-".join(p for p in parts if p)).strip("-.") or "route"
    if len(text) > 63:
        text = text[:54].rstrip("-.") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return text


def target(doc: Doc, rp: str, refs: Any, pools: dict, discovery: str) -> dict[str, Any] | None:
    """The route's `upstream` (one Service) or `upstreams` (a weighted split, weights as given: both APIs take
    0-1000000 and relative shares) for a rule's backendRefs."""
    if not refs:
        doc.unsupported(f"{rp}.backendRefs", "a rule without backends (Gateway API answers 500 or redirects; "
                                             "Gatewatch needs an upstream)")
        return None
    if not isinstance(refs, list):
        doc.error(f"{rp}.backendRefs", "expected a list")
        return None
    sides: dict[str, int] = {}
    failed = False
    for bi, ref in enumerate(refs):
        pool = _backend(doc, f"{rp}.backendRefs[{bi}]", ref, pools, discovery, weighted=True)
        if pool is None:
            failed = True
            continue
        sides[pool] = sides.get(pool, 0) + ref.get("weight", 1)  # the same Service twice: one side
    if failed:
        return None
    if not any(sides.values()):
        doc.unsupported(f"{rp}.backendRefs", "every backend has weight 0 (Gateway API answers 500)")
        return None
    if len(sides) == 1:
        return {"upstream": next(iter(sides))}
    return {"upstreams": [{"name": name, "weight": weight} for name, weight in sides.items()]}


def _backend(doc: Doc, bp: str, ref: Any, pools: dict, discovery: str, weighted: bool) -> str | None:
    """The pool of one Service backendRef (created once per Service and port): one instance, the Service's cluster
    DNS name (kube-proxy spreads over its pods), or with discovery "kubernetes" its EndpointSlices (Gatewatch
    balances the pods itself)."""
    if not isinstance(ref, dict):
        doc.error(bp, "expected a mapping")
        return None
    allowed = {"name", "namespace", "port", "group", "kind"} | ({"weight"} if weighted else set())
    for key in sorted(set(ref) - allowed):
        doc.unsupported(f"{bp}.{key}", f"{key} on a backendRef (per-backend filters are not imported)")
        return None
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        doc.unsupported(f"{bp}.kind", f"{ref.get('group', '')}/{ref.get('kind')} (only core Services)")
        return None
    svc, port, weight = ref.get("name"), ref.get("port"), ref.get("weight", 1)
    if not isinstance(svc, str) or not re.fullmatch(K8S_NAME, svc):
        doc.error(f"{bp}.name", f"{svc!r} is not a Service name (an RFC 1123 label)")
        return None
    if not isinstance(port, int) or not 1 <= port <= 65535:
        doc.error(f"{bp}.port", "required for a Service backend (1-65535)")
        return None
    if not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
        doc.error(f"{bp}.weight", "an integer 0-1000000")
        return None
    ns = ref.get("namespace") or doc.namespace
    if not isinstance(ns, str) or not re.fullmatch(K8S_NAME, ns):
        doc.error(f"{bp}.namespace", f"{ns!r} is not a namespace name")
        return None
    if ns != doc.namespace:
        doc.warn(f"{bp}.namespace", f"{ns}: in Kubernetes this needs a ReferenceGrant in {ns}; the importer "
                                    "does not check it")
    if (svc, ns, port) not in pools:
        pool: dict[str, Any] = {"name": config_name(ns, svc, str(port))}
        if discovery == "kubernetes":
            pool["discovery"] = {"kubernetes": {"namespace": ns, "service": svc, "port": port}}
        else:
            pool["instances"] = [{"host": f"{svc}.{ns}.svc.cluster.local", "port": port}]
        pools[(svc, ns, port)] = pool
    return pools[(svc, ns, port)]["name"]


def filters(doc: Doc, rp: str, filters: Any, matches: Any, pools: dict, discovery: str) -> dict[str, Any]:
    """Route keys (`policies`, `rewrite`, `mirror`) for a rule's filters, applied in their order."""
    policies: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    for fi, f in enumerate(filters if isinstance(filters, list) else []):
        fp = f"{rp}.filters[{fi}]"
        ftype = f.get("type") if isinstance(f, dict) else None
        if ftype in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            key = ftype[0].lower() + ftype[1:]
            spec = f.get(key) or {}
            if not _header_entries(doc, f"{fp}.{key}", spec):
                continue
        if ftype == "RequestHeaderModifier":
            if spec.get("add"):
                doc.unsupported(f"{fp}.requestHeaderModifier.add", "Gatewatch sets (replaces) request headers and "
                                "cannot append a value to one the client sent; use 'set' if replacing is meant")
            policies.append({"name": f"request-headers-{fi}", "type": "headers",
                             "set": {h["name"]: h["value"] for h in spec.get("set") or []},
                             "remove": list(spec.get("remove") or [])})
        elif ftype == "ResponseHeaderModifier":
            replaced = [h["name"] for h in spec.get("set") or []]
            policies.append({"name": f"response-headers-{fi}", "type": "headers",
                             "response_add": {h["name"]: h["value"] for h in
                                              (spec.get("set") or []) + (spec.get("add") or [])},
                             "response_remove": replaced + list(spec.get("remove") or [])})
        elif ftype == "URLRewrite":
            rewrite = f.get("urlRewrite") or {}
            if rewrite.get("hostname"):
                doc.unsupported(f"{fp}.urlRewrite.hostname", "rewriting the Host header")
            path = rewrite.get("path") or {}
            if path.get("type") == "ReplaceFullPath":
                full = str(path.get("replaceFullPath", "/"))
                policies.append({"name": f"rewrite-{fi}", "type": "path_rewrite", "regex": "^.*$",
                                 "replacement": full.replace("\\", "\\\\")})
            elif path.get("type") == "ReplacePrefixMatch":
                prefix = _only_prefix(matches)
                if prefix is None:
                    doc.error(f"{fp}.urlRewrite.path", "ReplacePrefixMatch needs exactly one PathPrefix match")
                    continue
                repl = str(path.get("replacePrefixMatch", "/"))
                if repl.rstrip("/") == "":
                    if prefix.rstrip("/"):
                        extras["rewrite"] = {"strip_prefix": prefix.rstrip("/")}
                else:  # the matched prefix, whole segments only (RFC 3986 §3.3), becomes the replacement
                    policies.append({"name": f"rewrite-{fi}", "type": "path_rewrite",
                                     "regex": f"^{re.escape(prefix.rstrip('/'))}(?=/|$)",
                                     "replacement": repl.rstrip("/").replace("\\", "\\\\")})
            elif path:
                doc.unsupported(f"{fp}.urlRewrite.path.type", f"{path.get('type')!r}")
        elif ftype == "RequestMirror" and "mirror" not in extras:
            mirror = _mirror(doc, f"{fp}.requestMirror", f.get("requestMirror"), pools, discovery)
            if mirror is not None:
                extras["mirror"] = mirror
        else:
            why = {"RequestRedirect": "redirects (Gatewatch answers a request by proxying it)",
                   "RequestMirror": "a second mirror (Gatewatch copies a route's requests to one shadow upstream)",
                   "CORS": "the CORS filter (write a Gatewatch cors policy by hand)",
                   "ExtensionRef": "implementation-specific filters"}.get(ftype, "not a filter Gatewatch knows")
            doc.unsupported(f"{fp}.type", f"{ftype!r}: {why}")
    if policies:
        extras["policies"] = policies
    return extras


def _mirror(doc: Doc, mp: str, spec: Any, pools: dict, discovery: str) -> dict[str, Any] | None:
    """RequestMirror → the route's `mirror`: the backend's pool and the share copied (`percent`, or `fraction`
    numerator/denominator; all requests when neither is set)."""
    if not isinstance(spec, dict):
        doc.error(mp, "expected a mapping")
        return None
    pool = _backend(doc, f"{mp}.backendRef", spec.get("backendRef"), pools, discovery, weighted=False)
    if pool is None:
        return None
    percent = 100.0
    if "percent" in spec:
        percent = spec["percent"]
        if not isinstance(percent, int) or not 0 <= percent <= 100:
            doc.error(f"{mp}.percent", "an integer 0-100")
            return None
    elif "fraction" in spec:
        frac = spec["fraction"] if isinstance(spec["fraction"], dict) else {}
        num, den = frac.get("numerator"), frac.get("denominator", 100)
        if not isinstance(num, int) or not isinstance(den, int) or den < 1 or not 0 <= num <= den:
            doc.error(f"{mp}.fraction", "numerator 0..denominator, denominator at least 1")
            return None
        percent = round(100.0 * num / den, 6)
    return {"upstream": pool, "percent": float(percent)}


def _header_entries(doc: Doc, path: str, spec: Any) -> bool:
    """A header modifier's `set`/`add` hold {name, value} entries and `remove` names (HTTPHeaderFilter)."""
    if not isinstance(spec, dict):
        doc.error(path, "expected a mapping")
        return False
    ok = True
    for op in ("set", "add"):
        for i, h in enumerate(spec.get(op) or []):
            if not isinstance(h, dict) or not isinstance(h.get("name"), str) or not isinstance(h.get("value"), str) \
                    or not re.fullmatch(HEADER_NAME, h["name"]):
                doc.error(f"{path}.{op}[{i}]", "needs a header 'name' (an RFC 9110 token) and a string 'value'")
                ok = False
    for i, name in enumerate(spec.get("remove") or []):
        if not isinstance(name, str) or not re.fullmatch(HEADER_NAME, name):
            doc.error(f"{path}.remove[{i}]", f"{name!r} is not a header name")
            ok = False
    return ok


def _only_prefix(matches: Any) -> str | None:
    if not isinstance(matches, list) or len(matches) != 1 or not isinstance(matches[0], dict):
        return None
    path = matches[0].get("path") or {}
    return path.get("value", "/") if path.get("type", "PathPrefix") == "PathPrefix" else None

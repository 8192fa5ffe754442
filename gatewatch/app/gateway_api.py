"""`gatewatch import gateway-api FILE`: Kubernetes Gateway API HTTPRoutes (gateway.networking.k8s.io/v1) as a
Gatewatch config.

What maps (docs/kubernetes.md "Gateway API"): `hostnames` → `match.hosts`; each rule's `matches` (path `Exact` /
`PathPrefix`, `headers` and `queryParams` of type `Exact`, `method`) → one edge route per match; each Service
`backendRef` → a pool (one instance, `<svc>.<ns>.svc.cluster.local:<port>`, or with `discovery="kubernetes"` the
Service's EndpointSlices), several of them → the route's weighted split `upstreams`; `RequestMirror` → `mirror`;
`RequestHeaderModifier` (set, remove) and `ResponseHeaderModifier` (set, add, remove) → a `headers` policy;
`URLRewrite` path (`ReplacePrefixMatch`, `ReplaceFullPath`) → `rewrite.strip_prefix` or a `path_rewrite` policy.
Anything else that would change what a request gets is an error naming the document and field path, so the
output never silently behaves differently from the input; what only drops a setting is a warning.

Gatewatch tries routes in order, first match wins, so the routes are written in the HTTPRoute precedence order
(GEP-1323; HTTPRouteSpec.hostnames and HTTPRouteRule.matches in apis/v1/httproute_types.go): the most specific
hostname first (exact, then longer wildcards, then none), then an Exact path, the longest PathPrefix, a method,
more header matches, more query matches; ties go to the oldest route (creationTimestamp), then
"{namespace}/{name}", then rule and match order.

Primitives: `convert(docs, ...) -> Conversion` (pure: parsed YAML documents in, a config mapping and warnings
out, `NotImportable` listing every problem), `main(args)` for the CLI.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gatewatch.app import gateway_api_actions as actions
from gatewatch.app.gateway_api_actions import Doc, config_name
from gatewatch.config import ConfigError, parse_config

GROUP = "gateway.networking.k8s.io"
VERSIONS = ("v1", "v1beta1")  # v1beta1 HTTPRoute has the same schema (served for compatibility)
NOT_ROUTES = {"Gateway", "GatewayClass", "ReferenceGrant", "BackendTLSPolicy"}  # read by other tools, skipped here


class NotImportable(Exception):
    """The input cannot be converted faithfully. `problems`: `doc N (HTTPRoute ns/name) field.path: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Conversion:
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Route:
    """One edge route before ordering: its Gatewatch form and its HTTPRoute precedence key."""

    key: tuple
    route: dict[str, Any]


def _host_key(host: str | None) -> tuple:
    """Hostname precedence: an exact name beats any wildcard, a longer wildcard a shorter one, none comes last."""
    if host is None:
        return (2, 0)
    return (1, -len(host)) if host.startswith("*.") else (0, 0)


def _match_key(path_type: str, path: str, method: str | None, headers: int, query: int) -> tuple:
    return (0 if path_type == "Exact" else 1, -len(path), 0 if method else 1, -headers, -query)


def _objects(docs: list[Any]):
    """(label, object) for each YAML document, 1-based; a List (`kubectl get httproutes -A -o yaml`) yields its
    items as `doc N items[i]`."""
    for index, obj in enumerate(docs):
        if obj is None:
            continue
        if isinstance(obj, dict) and str(obj.get("kind", "")).endswith("List") and isinstance(obj.get("items"), list):
            for i, item in enumerate(obj["items"]):
                yield f"doc {index + 1} items[{i}]", item
        else:
            yield f"doc {index + 1}", obj


def convert(docs: list[Any], listen: str = "0.0.0.0:8080", discovery: str = "static") -> Conversion:
    problems: list[str] = []
    warnings: list[str] = []
    routes: list[_Route] = []
    pools: dict[tuple, dict[str, Any]] = {}
    for label, obj in _objects(docs):
        if not isinstance(obj, dict):
            problems.append(f"{label}: expected a Kubernetes object (a mapping), got {type(obj).__name__}")
            continue
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        kind = obj.get("kind")
        if group == GROUP and kind in NOT_ROUTES:
            warnings.append(f"{label} ({kind}): skipped; Gatewatch's listener and TLS are in the config")
            continue
        if group != GROUP or kind != "HTTPRoute":
            problems.append(f"{label} kind: unsupported: {obj.get('apiVersion')}/{kind} (only HTTPRoute of "
                            f"{GROUP}/v1 is imported; GRPCRoute, TCPRoute, TLSRoute and UDPRoute are not yet)")
            continue
        doc = Doc(label, obj, problems, warnings)
        if version not in VERSIONS:
            doc.error("apiVersion", f"unsupported version {version!r} (expected {GROUP}/v1)")
            continue
        if not doc.name:
            doc.error("metadata.name", "required")
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            doc.error("spec", "required (a mapping)")
            continue
        _route(doc, spec, routes, pools, discovery)
    if problems:
        raise NotImportable(problems)
    if not routes:
        raise NotImportable(["(input): no HTTPRoute found"])
    routes.sort(key=lambda r: r.key)
    listener: dict[str, Any] = {"name": "public", "address": listen}
    if any("_" in h["name"] for r in routes for h in r.route["match"].get("headers", ())):
        listener["headers_with_underscores"] = "allow"
        warnings.append("edge.listeners[0].headers_with_underscores: set to allow (a header match names a header "
                        "with '_', which the default would drop before routing)")
    config = {"admin": {"address": "127.0.0.1:9901"},
              "edge": {"listeners": [listener], "routes": [r.route for r in routes]},
              "balancer": {"pools": list(pools.values())}}
    return Conversion(config, warnings)


def _route(doc: Doc, spec: dict, routes: list[_Route], pools: dict, discovery: str) -> None:
    for key in sorted(set(spec) - {"parentRefs", "hostnames", "rules"}):
        doc.unsupported(f"spec.{key}", "not an HTTPRoute field Gatewatch knows")
    if spec.get("parentRefs"):
        doc.warn("spec.parentRefs", "ignored: the generated config has one listener (--listen); Gateways are not "
                                    "modelled")
    hostnames = spec.get("hostnames") or []
    if not isinstance(hostnames, list):
        doc.error("spec.hostnames", "expected a list")
        hostnames = []
    for i, h in enumerate(hostnames):
        if not isinstance(h, str) or not re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?", h):
            doc.error(f"spec.hostnames[{i}]", f"{h!r} is not an RFC 1123 host name or '*.' wildcard")
    # Exact names share one route (two never match the same request); each wildcard gets its own, ordered by
    # length; no hostnames matches any host.
    exact = [h for h in hostnames if isinstance(h, str) and not h.startswith("*.")]
    host_groups: list[tuple[tuple, list[str]]] = ([(_host_key(exact[0]), exact)] if exact else []) + \
        [(_host_key(h), [h]) for h in hostnames if isinstance(h, str) and h.startswith("*.")]
    if not hostnames:
        host_groups = [(_host_key(None), [])]
    rules = spec.get("rules") or [{}]
    if not isinstance(rules, list):
        doc.error("spec.rules", "expected a list")
        return
    for ri, rule in enumerate(rules):
        rp = f"spec.rules[{ri}]"
        if not isinstance(rule, dict):
            doc.error(rp, "expected a mapping")
            continue
        for key in sorted(set(rule) - {"name", "matches", "filters", "backendRefs", "timeouts"}):
            doc.unsupported(f"{rp}.{key}", f"{key} (no Gatewatch equivalent is imported)")
        if rule.get("timeouts"):
            doc.warn(f"{rp}.timeouts", "not imported: Gatewatch's timeouts are per attempt (connect_s, response_s, "
                                       "idle_s; retries.deadline_s): set them on the routes by hand")
        target = actions.target(doc, rp, rule.get("backendRefs"), pools, discovery)
        extras = actions.filters(doc, rp, rule.get("filters") or [], rule.get("matches"), pools, discovery)
        matches = rule.get("matches") or [{}]
        if not isinstance(matches, list):
            doc.error(f"{rp}.matches", "expected a list")
            continue
        for mi, m in enumerate(matches):
            converted = _match(doc, f"{rp}.matches[{mi}]", m)
            if converted is None or target is None:
                continue
            match, mkey = converted
            for hi, (hkey, hosts) in enumerate(host_groups):
                label = rule.get("name") or f"r{ri}"
                name = config_name(doc.namespace, doc.name, str(label), f"m{mi}",
                                   f"h{hi}" if len(host_groups) > 1 else "")
                route = {"name": name, "match": dict(match, **({"hosts": hosts} if hosts else {})),
                         **target, **extras}
                key = (hkey, mkey, doc.created or "~", f"{doc.namespace}/{doc.name}", ri, mi, hi)
                routes.append(_Route(key, route))


def _match(doc: Doc, mp: str, m: Any) -> tuple[dict, tuple] | None:
    if not isinstance(m, dict):
        doc.error(mp, "expected a mapping")
        return None
    ok = True
    for key in sorted(set(m) - {"path", "headers", "queryParams", "method"}):
        doc.unsupported(f"{mp}.{key}", f"{key} is not an HTTPRouteMatch field Gatewatch knows")
        ok = False
    path = m.get("path") or {}
    ptype, pvalue = path.get("type", "PathPrefix"), path.get("value", "/")
    if ptype not in ("Exact", "PathPrefix"):
        doc.unsupported(f"{mp}.path.type", f"{ptype} (Gatewatch routes match Exact and PathPrefix paths; a "
                                          "RegularExpression has no equivalent)")
        ok = False
    elif not isinstance(pvalue, str) or not pvalue.startswith("/") or "?" in pvalue or "#" in pvalue:
        doc.error(f"{mp}.path.value", f"{pvalue!r} must be an absolute path without query or fragment")
        ok = False
    out: dict[str, Any] = {"path": {"exact" if ptype == "Exact" else "prefix": pvalue}}
    for field_name, out_key in (("headers", "headers"), ("queryParams", "query")):
        conditions, seen = [], set()
        for i, h in enumerate(m.get(field_name) or []):
            hp = f"{mp}.{field_name}[{i}]"
            if not isinstance(h, dict) or not h.get("name") or not isinstance(h.get("value"), str):
                doc.error(hp, "needs 'name' and a string 'value'")
                ok = False
                continue
            if h.get("type", "Exact") != "Exact":
                doc.unsupported(f"{hp}.type", f"{h['type']} (only Exact value matches are imported)")
                ok = False
                continue
            folded = h["name"].lower() if field_name == "headers" else h["name"]
            if folded in seen:  # the spec: only the first entry with an equivalent name is considered
                doc.warn(hp, f"ignored: a second match on {h['name']!r}")
                continue
            seen.add(folded)
            conditions.append({"name": h["name"], "value": h["value"]})
        if conditions:
            out[out_key] = conditions
    method = m.get("method")
    if method is not None:
        if not isinstance(method, str) or not re.fullmatch(r"[A-Z]+", method):
            doc.error(f"{mp}.method", f"{method!r} is not an upper-case HTTP method")
            ok = False
        else:
            out["methods"] = [method]
    if not ok:
        return None
    key = _match_key(ptype, pvalue, method, len(out.get("headers", ())), len(out.get("query", ())))
    return out, key


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: routes that share a match or policies are written out in full, as a person would."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main(args) -> int:
    """CLI: read FILE (or '-'), print the config YAML (or write it to -o), warnings on stderr. Exit 2 when the
    input cannot be imported faithfully."""
    source = "<stdin>" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        docs = list(yaml.safe_load_all(text))
    except OSError as err:
        print(f"{source}: cannot read: {err.strerror or err}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"{source}: not UTF-8 text", file=sys.stderr)
        return 2
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        print(f"{source}: {where}: invalid YAML: {getattr(err, 'problem', None) or err}", file=sys.stderr)
        return 2
    try:
        result = convert(docs, listen=args.listen, discovery=args.discovery)
        parse_config(result.config, "<imported>")  # what is printed is always a valid Gatewatch config
    except NotImportable as err:
        print(f"{source}: cannot import ({len(err.problems)} problem{'s' if len(err.problems) != 1 else ''}):",
              file=sys.stderr)
        for p in err.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"{source}: the imported config is invalid:", file=sys.stderr)
        for p in err.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = f"# Imported from {source} by `gatewatch import gateway-api`; routes in HTTPRoute precedence order.\n" + \
        yaml.dump(result.config, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)
    if args.output:
        Path(args.output).write_text(out, encoding="utf-8")
    else:
        sys.stdout.write(out)
    return 0

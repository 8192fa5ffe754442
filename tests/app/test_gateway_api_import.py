"""`gatewatch import gateway-api`: HTTPRoutes in, a Gatewatch config out that passes Gatewatch's own validation,
routes ordered by the HTTPRoute precedence rules, and every construct that cannot be converted faithfully refused
with the document and field path. The ordering and filters are also proven on the wire: the imported config runs
with real backends (one per Service) and requests land where Gateway API says they must.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import aiohttp
import pytest
import yaml
from aiohttp import web

from gatewatch.app.cli import main as cli_main
from gatewatch.app.gateway_api import NotImportable, convert
from gatewatch.config import parse_config
from tests.support.net import edge_port, start_app
from tests.support.runtime import running

ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: prod, creationTimestamp: "2025-03-01T10:00:00Z"}
spec:
  parentRefs: [{name: public-gw, namespace: infra}]
  hostnames: [shop.example.com, "*.example.com"]
  rules:
    - name: api
      matches:
        - path: {type: PathPrefix, value: /api}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Tier, value: api}]
            remove: [X-Debug]
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs:
        - {name: api, port: 8080, weight: 90}
        - {name: api-canary, port: 8080, weight: 10}
    - matches:
        - path: {type: PathPrefix, value: /api/orders}
          method: POST
        - path: {type: PathPrefix, value: /api/orders}
          headers: [{name: X-Version, value: v2}]
      backendRefs: [{name: orders, port: 8080}]
    - matches:
        - path: {type: Exact, value: /api/status}
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{name: Cache-Control, value: no-store}]
            add: [{name: X-Served-By, value: gatewatch}]
            remove: [Server]
        - type: RequestMirror
          requestMirror:
            backendRef: {name: status-next, port: 80}
            percent: 25
      backendRefs: [{name: status, port: 80}]
---
# An older route, no hostnames: any host. Loses to shop's on shop's hosts, wins ties against newer routes.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: legacy, namespace: prod, creationTimestamp: 2024-01-01T00:00:00Z}
spec:
  rules:
    - matches:
        - path: {type: PathPrefix, value: /v1}
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api/v1}}
      backendRefs: [{name: legacy, port: 8080}]
    - backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: newer-catchall, namespace: prod, creationTimestamp: "2025-06-01T00:00:00Z"}
spec:
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: other, port: 80}]
"""


def docs(text: str = ROUTES) -> list:
    return list(yaml.safe_load_all(text))


def route_names(cfg: dict) -> list[str]:
    return [r["name"] for r in cfg["edge"]["routes"]]


def test_the_output_is_a_valid_gatewatch_config_in_precedence_order():
    result = convert(docs())
    parse_config(result.config)  # raises ConfigError naming the field if not
    assert route_names(result.config) == [
        # exact hostname: Exact path, then longest prefix; method before headers at equal prefix; then /api
        "prod-shop-r2-m0-h0", "prod-shop-r1-m0-h0", "prod-shop-r1-m1-h0", "prod-shop-api-m0-h0",
        # the wildcard hostname: the same order
        "prod-shop-r2-m0-h1", "prod-shop-r1-m0-h1", "prod-shop-r1-m1-h1", "prod-shop-api-m0-h1",
        # any host: /v1 (longer prefix), then the two '/' catch-alls, the older route first
        "prod-legacy-r0-m0", "prod-legacy-r1-m0", "prod-newer-catchall-r0-m0"]
    assert any("parentRefs" in w for w in result.warnings)


def test_backends_weights_and_filters_map_onto_pools_and_policies():
    cfg = convert(docs()).config
    routes = {r["name"]: r for r in cfg["edge"]["routes"]}
    pools = {p["name"]: p for p in cfg["balancer"]["pools"]}
    api = routes["prod-shop-api-m0-h0"]
    assert api["match"] == {"path": {"prefix": "/api"}, "hosts": ["shop.example.com"]}
    assert api["rewrite"] == {"strip_prefix": "/api"}
    assert api["policies"] == [{"name": "request-headers-0", "type": "headers", "set": {"X-Tier": "api"},
                                "remove": ["X-Debug"]}]
    # Weighted backendRefs: the route's weighted split, one pool per Service (weights as given).
    assert api["upstreams"] == [{"name": "prod-api-8080", "weight": 90}, {"name": "prod-api-canary-8080", "weight": 10}]
    assert pools["prod-api-canary-8080"]["instances"] == [{"host": "api-canary.prod.svc.cluster.local", "port": 8080}]
    assert routes["prod-shop-r2-m0-h0"]["mirror"] == {"upstream": "prod-status-next-80", "percent": 25.0}
    assert routes["prod-shop-r1-m0-h0"]["match"]["methods"] == ["POST"]
    assert routes["prod-shop-r1-m1-h0"]["match"]["headers"] == [{"name": "X-Version", "value": "v2"}]
    assert routes["prod-shop-r2-m0-h1"]["match"] == {"path": {"exact": "/api/status"}, "hosts": ["*.example.com"]}
    assert routes["prod-shop-r2-m0-h0"]["policies"] == [{
        "name": "response-headers-0", "type": "headers",
        "response_add": {"Cache-Control": "no-store", "X-Served-By": "gatewatch"},
        "response_remove": ["Cache-Control", "Server"]}]
    assert routes["prod-legacy-r0-m0"]["policies"] == [
        {"name": "rewrite-0", "type": "path_rewrite", "regex": "^/v1(?=/|$)", "replacement": "/api/v1"}]
    # One pool per distinct backend set: the same Service on two routes is one pool.
    assert routes["prod-legacy-r1-m0"]["upstream"] == "prod-web-80"
    used = {r.get("upstream") for r in cfg["edge"]["routes"]} | {
        side["name"] for r in cfg["edge"]["routes"] for side in r.get("upstreams", ())} | {
        r["mirror"]["upstream"] for r in cfg["edge"]["routes"] if "mirror" in r}
    assert set(pools) == used - {None}


def test_kubernetes_discovery_watches_each_service():
    result = convert(docs(), discovery="kubernetes")
    parse_config(result.config)
    pools = {p["name"]: p for p in result.config["balancer"]["pools"]}
    assert pools["prod-web-80"] == {"name": "prod-web-80", "discovery": {
        "kubernetes": {"namespace": "prod", "service": "web", "port": 80}}}
    assert all("discovery" in p and "instances" not in p for p in pools.values())


BAD = [
    ("path: {type: RegularExpression, value: '/a.*'}",
     "doc 1 (HTTPRoute prod/bad) spec.rules[0].matches[0].path.type: unsupported: RegularExpression"),
    ("path: {type: PathPrefix, value: 'no-slash'}", "spec.rules[0].matches[0].path.value: 'no-slash' must be"),
    ("headers: [{name: X-A, type: RegularExpression, value: 'a.*'}]",
     "spec.rules[0].matches[0].headers[0].type: unsupported: RegularExpression"),
    ("queryParams: [{name: q}]", "spec.rules[0].matches[0].queryParams[0]: needs 'name' and a string 'value'"),
    ("method: get", "spec.rules[0].matches[0].method: 'get' is not an upper-case HTTP method"),
]


def problems_of_rule(*lines: str) -> list[str]:
    """What the import refuses in an HTTPRoute prod/bad of one rule, `lines` being the rule's YAML lines."""
    rule = "\n      ".join(lines)
    text = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bad, namespace: prod}}
spec:
  rules:
    - {rule}
"""
    with pytest.raises(NotImportable) as err:
        convert(docs(text))
    return err.value.problems


@pytest.mark.parametrize("match, problem", BAD)
def test_bad_matches_are_refused_with_their_path(match, problem):
    problems = problems_of_rule("matches:", f"  - {match}", "backendRefs: [{name: web, port: 80}]")
    assert any(problem in p for p in problems), problems


BAD_RULES = [
    ("filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]",
     "spec.rules[0].filters[0].type: unsupported: 'RequestRedirect'"),
    (("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}}},"
      " {type: RequestMirror, requestMirror: {backendRef: {name: b, port: 80}}}]"),
     "spec.rules[0].filters[1].type: unsupported: 'RequestMirror': a second mirror"),
    ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, percent: 150}}]",
     "spec.rules[0].filters[0].requestMirror.percent: an integer 0-100"),
    ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}]",
     "spec.rules[0].filters[0].requestMirror.backendRef.port: required"),
    ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-A, value: '1'}]}}]",
     "spec.rules[0].filters[0].requestHeaderModifier.add: unsupported: Gatewatch sets (replaces)"),
    ("filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: 'bad name', value: x}]}}]",
     "spec.rules[0].filters[0].responseHeaderModifier.set[0]: needs a header 'name'"),
    ("filters: [{type: URLRewrite, urlRewrite: {hostname: api.internal}}]",
     "spec.rules[0].filters[0].urlRewrite.hostname: unsupported"),
    ("sessionPersistence: {type: Cookie}", "spec.rules[0].sessionPersistence: unsupported"),
]


@pytest.mark.parametrize("extra, problem", BAD_RULES)
def test_unsupported_filters_and_fields_are_refused(extra, problem):
    problems = problems_of_rule("backendRefs: [{name: web, port: 80}]", extra)
    assert any(problem in p for p in problems), problems


def test_backend_refs_problems():
    text = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: prod}
spec:
  rules:
    - backendRefs: [{name: web}, {name: Web_1, port: 80}]
    - backendRefs: [{name: bucket, group: storage.example.com, kind: Bucket, port: 80}]
    - backendRefs: [{name: a, port: 80, weight: 0}]
    - matches: [{path: {value: /x}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g}
spec: {}
---
- not a mapping
"""
    with pytest.raises(NotImportable) as err:
        convert(docs(text))
    assert err.value.problems == [
        "doc 1 (HTTPRoute prod/b) spec.rules[0].backendRefs[0].port: required for a Service backend (1-65535)",
        ("doc 1 (HTTPRoute prod/b) spec.rules[0].backendRefs[1].name: 'Web_1' is not a Service name (an RFC 1123 "
         "label)"),
        ("doc 1 (HTTPRoute prod/b) spec.rules[1].backendRefs[0].kind: unsupported: storage.example.com/Bucket "
         "(only core Services)"),
        ("doc 1 (HTTPRoute prod/b) spec.rules[2].backendRefs: unsupported: every backend has weight 0 (Gateway "
         "API answers 500)"),
        ("doc 1 (HTTPRoute prod/b) spec.rules[3].backendRefs: unsupported: a rule without backends (Gateway API "
         "answers 500 or redirects; Gatewatch needs an upstream)"),
        ("doc 2 kind: unsupported: gateway.networking.k8s.io/v1/GRPCRoute (only HTTPRoute of "
         "gateway.networking.k8s.io/v1 is imported; GRPCRoute, TCPRoute, TLSRoute and UDPRoute are not yet)"),
        "doc 3: expected a Kubernetes object (a mapping), got list"]


def test_split_weights_names_and_mirror_fractions():
    long = "a" * 60
    text = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {long}, namespace: {long}}}
spec:
  hostnames: [a.example.com, b.example.com]
  rules:
    - backendRefs:
        - {{name: x, port: 80, weight: 999999}}
        - {{name: y, port: 80, weight: 0}}
        - {{name: x, port: 80, weight: 1}}
      filters:
        - type: RequestMirror
          requestMirror: {{backendRef: {{name: shadow, port: 80}}, fraction: {{numerator: 1, denominator: 3}}}}
"""
    cfg = convert(docs(text)).config
    parse_config(cfg)
    (route,) = cfg["edge"]["routes"]  # exact hostnames share one route
    assert route["match"]["hosts"] == ["a.example.com", "b.example.com"]
    assert len(route["name"]) <= 63 and all(len(p["name"]) <= 63 for p in cfg["balancer"]["pools"])
    assert [s["weight"] for s in route["upstreams"]] == [1_000_000, 0]  # one side per Service; 0 kept (blue-green)
    assert route["mirror"]["percent"] == pytest.approx(33.333333)


def test_cli_writes_a_file_that_gatewatch_validate_accepts(tmp_path, capsys):
    src = tmp_path / "routes.yaml"
    src.write_text(ROUTES)
    out = tmp_path / "gatewatch.yaml"
    assert cli_main(["import", "gateway-api", str(src), "-o", str(out), "--listen", "127.0.0.1:8088"]) == 0
    assert "warning: doc 1 (HTTPRoute prod/shop) spec.parentRefs" in capsys.readouterr().err
    assert cli_main(["validate", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["edge"]["listeners"][0]["address"] == "127.0.0.1:8088"


def test_cli_refuses_with_exit_2_and_prints_nothing_on_stdout(tmp_path):
    src = tmp_path / "routes.yaml"
    src.write_text(ROUTES.replace("type: Exact, value: /api/status", "type: RegularExpression, value: /s.*"))
    run = subprocess.run([sys.executable, "-m", "gatewatch", "import", "gateway-api", str(src)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert ("doc 1 (HTTPRoute prod/shop) spec.rules[2].matches[0].path.type: unsupported: RegularExpression"
            in run.stderr)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("kind: [unclosed\n")
    assert cli_main(["import", "gateway-api", str(bad_yaml)]) == 2


async def test_the_imported_routes_behave_as_gateway_api_says(tmp_path):
    """Each Service is a real backend answering its own name, the path and headers it saw."""
    runners, ports = [], {}

    def backend(name):
        async def handle(request: web.Request) -> web.Response:
            return web.json_response({"svc": name, "path": request.path_qs, "tier": request.headers.get("X-Tier"),
                                      "debug": request.headers.get("X-Debug")}, headers={"Server": "backend"})
        return handle

    cfg = copy.deepcopy(convert(docs(), listen="127.0.0.1:0").config)
    for pool in cfg["balancer"]["pools"]:
        for inst in pool["instances"]:  # each Service: a real backend on loopback
            svc = inst["host"].split(".")[0]
            if svc not in ports:
                runner, ports[svc] = await start_app(backend(svc))
                runners.append(runner)
            inst["host"], inst["port"] = "127.0.0.1", ports[svc]
    cfg["admin"] = {"address": "127.0.0.1:0"}
    cfg["telemetry"] = {"local_dir": str(tmp_path / "telemetry")}
    try:
        async with running(cfg) as rt, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{edge_port(rt)}"

            async def get(path, host, method="GET", **headers):
                async with s.request(method, base + path, headers={"Host": host, **headers}) as r:
                    return r.status, await r.json(), r.headers

            _, body, headers = await get("/api/status", "shop.example.com")
            assert body["svc"] == "status" and headers["Cache-Control"] == "no-store"
            assert headers["X-Served-By"] == "gatewatch" and "Server" not in headers
            _, body, _ = await get("/api/orders/7", "x.example.com", "POST")
            assert body["svc"] == "orders"
            _, body, _ = await get("/api/orders/7", "shop.example.com", **{"X-Version": "v2"})
            assert body["svc"] == "orders"
            _, body, _ = await get("/api/orders/7?a=1", "shop.example.com", **{"X-Debug": "1"})
            assert body["svc"] in ("api", "api-canary")  # GET without the header: the /api rule
            assert body["path"] == "/orders/7?a=1" and body["tier"] == "api" and body["debug"] is None
            # On shop's hosts, a path none of shop's rules match falls through to the host-less routes.
            _, body, _ = await get("/v1/items", "shop.example.com")
            assert body["svc"] == "legacy"
            _, body, _ = await get("/v1/items", "elsewhere.test")
            assert body == {"svc": "legacy", "path": "/api/v1/items", "tier": None, "debug": None}
            _, body, _ = await get("/", "elsewhere.test")
            assert body["svc"] == "web"  # the older of the two '/' catch-alls
    finally:
        for runner in runners:
            await runner.cleanup()


def test_a_kubectl_list_is_read_item_by_item():
    """`kubectl get httproutes -A -o yaml` prints one List; problems name the item."""
    items = docs()
    items[2]["spec"]["rules"][0]["matches"][0]["path"]["type"] = "RegularExpression"
    listed = [{"apiVersion": "v1", "kind": "List", "items": items}]
    with pytest.raises(NotImportable) as err:
        convert(listed)
    assert err.value.problems == [(
        "doc 1 items[2] (HTTPRoute prod/newer-catchall) spec.rules[0].matches[0].path.type: unsupported: "
        "RegularExpression (Gatewatch routes match Exact and PathPrefix paths; a RegularExpression has no "
        "equivalent)")]
    listed[0]["items"] = docs()
    assert convert(listed).config == convert(docs()).config

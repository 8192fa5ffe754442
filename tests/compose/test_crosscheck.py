"""Cross-checks between the compose file and every config it mounts: names, ports, pipelines, files.

No Docker engine here, so this is what can be proven statically: every host:port any config names is a compose
service listening on that port; every service listens where the others expect it; the Collector's pipelines are
well-formed and use the current (2026) component names; metrics are computed before tail sampling; gatewatch's
OTLP endpoints point at the collector; the gatewatch configs pass `gatewatch validate`; every file Grafana and
Prometheus are told to load exists. Tests about dashboards/generated/ fail until `gatewatch dashboards build`
output is committed there (that is intended: the stack cannot start without it).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gatewatch.telemetry.names import Attr, Outcome
from tests.compose.stack import COMPOSE_DIR, LOCAL_HOSTS, REPO, Stack, host_ports, load_yaml

GATEWATCH_SERVICES = ("edge", "balancer", "backend-a", "backend-b", "backend-c", "loadgen")
COLLECTOR_CONFIG = "/etc/otelcol-contrib/config.yaml"
PROM_CONFIG = "/etc/prometheus/prometheus.yml"
GRAFANA_DATASOURCES = "/etc/grafana/provisioning/datasources"
GRAFANA_DASHBOARD_PROVIDERS = "/etc/grafana/provisioning/dashboards"
DASHBOARD_UIDS = {"gatewatch-overview", "gatewatch-journey", "gatewatch-balancer", "gatewatch-decisions",
                  "gatewatch-self", "gatewatch-traffic", "gatewatch-protocols"}
DATASOURCE_UIDS = {"prometheus", "tempo", "loki"}

# Collector component types this stack may use: the current names at otelcol-contrib 0.165.x. The names on the
# right were renamed in 2026 (open-telemetry/opentelemetry-collector#14396, -contrib#45339) and only load as
# deprecated aliases.
CURRENT_TYPES = {
    "receivers": {"otlp"},
    # no `batch`: exporters batch in their sending queue (sending_queue.batch), the Collector's recommended path
    "processors": {"memory_limiter", "tail_sampling", "resource", "attributes", "transform", "filter"},
    "exporters": {"otlp_grpc", "otlp_http", "debug", "prometheus", "prometheus_remote_write"},
    "connectors": {"span_metrics", "service_graph", "forward"},
}
DEPRECATED_TYPES = {"otlp": "otlp_grpc", "otlphttp": "otlp_http", "spanmetrics": "span_metrics",
                    "servicegraph": "service_graph", "prometheusremotewrite": "prometheus_remote_write",
                    "logging": "debug"}


@pytest.fixture(scope="module")
def stack() -> Stack:
    return Stack()


@pytest.fixture(scope="module")
def collector(stack) -> dict:
    return load_yaml(stack.config_file("otel-collector", COLLECTOR_CONFIG))


def _ctype(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def _gatewatch_configs(stack: Stack) -> dict[str, Path]:
    """service → the gatewatch config file it runs (`gatewatch run -c FILE`)."""
    out = {}
    for name in GATEWATCH_SERVICES:
        cmd = stack.services[name].get("command") or []
        if cmd[:1] == ["run"]:
            out[name] = stack.config_file(name, cmd[cmd.index("-c") + 1])
    return out


def _texts(stack: Stack) -> dict[str, str]:
    """Every config text in the stack that may name another service, keyed by a label for messages."""
    texts = {}
    for name in stack.services:
        for m in stack.mounts(name):
            files = [m.source] if m.source.is_file() else sorted(m.source.glob("*.y*ml")) if m.source.is_dir() else []
            for f in files:
                texts[f"{name}:{f.relative_to(REPO)}"] = f.read_text(encoding="utf-8")
        env = stack.services[name].get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        texts[f"{name}:environment"] = "\n".join(f"{k}={v}" for k, v in items)
        texts[f"{name}:command"] = " ".join(map(str, stack.services[name].get("command") or []))
    return texts


# --- images, ports, files ---------------------------------------------------------------------------------------

def test_every_image_is_pinned_to_a_version(stack):
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, svc in stack.services.items():
        image = svc.get("image")
        assert image, f"{name}: no image"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+([.-][\w.]+)?", tag), f"{name}: {image!r}"
        if name in GATEWATCH_SERVICES:
            assert image == f"gatewatch:{version}", f"{name}: the locally built image is gatewatch:{version}"
            build = svc["build"]
            assert (stack.path.parent / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"


def test_only_grafana_and_the_edge_publish_ports(stack):
    published = {name for name, svc in stack.services.items() if svc.get("ports")}
    assert published == {"grafana", "edge"}
    for name in published:
        for p in stack.services[name]["ports"]:
            assert str(p).startswith("127.0.0.1:"), f"{name}: {p} is published on every interface"


def test_every_bind_mount_exists(stack):
    missing = [f"{name}: {m.source.relative_to(REPO)} → {m.target}"
               for name in stack.services for m in stack.mounts(name) if not m.source.exists()]
    assert not missing, "bind-mount sources missing:\n" + "\n".join(missing)


def test_dockerfile_is_slim_non_root_and_checks_readiness():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases and all(re.fullmatch(r"python:\d+\.\d+-slim-\w+", b) for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0")), users
    health = re.search(r"^HEALTHCHECK\b(.*?)(?=^\S)", text, re.M | re.S)
    assert health and "/readyz" in health.group(1)
    assert re.search(r'^ENTRYPOINT \["gatewatch"\]', text, re.M)
    assert (REPO / ".dockerignore").exists()


# --- names and ports ---------------------------------------------------------------------------------------------

def test_every_referenced_host_and_port_is_a_listening_service(stack):
    problems = []
    for where, text in _texts(stack).items():
        for host, port in sorted(host_ports(text)):
            if host in LOCAL_HOSTS or "." in host:
                continue
            if host not in stack.services:
                problems.append(f"{where}: {host}:{port} — no service named {host!r}")
            elif port not in stack.exposed(host):
                problems.append(f"{where}: {host}:{port} — {host} listens on {sorted(stack.exposed(host))}")
    assert not problems, "\n".join(problems)


def test_every_service_listens_where_the_compose_file_says(stack, collector):
    listen: dict[str, set[int]] = {}
    for name, path in _gatewatch_configs(stack).items():
        cfg = load_yaml(path)
        addrs = [cfg.get("admin", {}).get("address", "127.0.0.1:9901")]
        for section in ("edge", "balancer"):
            addrs += [lst["address"] for lst in (cfg.get(section) or {}).get("listeners", [])]
        for a in addrs:
            assert a.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"), f"{name}: {a} is not reachable from other containers"
        listen[name] = {int(a.rsplit(":", 1)[1]) for a in addrs}
    for name in ("backend-a", "backend-b", "backend-c"):
        cmd = stack.services[name]["command"]
        listen[name] = {int(cmd[cmd.index("--listen") + 1].rsplit(":", 1)[1])}
    listen["otel-collector"] = {int(p["endpoint"].rsplit(":", 1)[1])
                                for p in collector["receivers"]["otlp"]["protocols"].values()}
    tempo = load_yaml(stack.config_file("tempo", "/etc/tempo/tempo.yaml"))
    listen["tempo"] = {tempo["server"]["http_listen_port"]} | {
        int(p["endpoint"].rsplit(":", 1)[1]) for p in tempo["distributor"]["receivers"]["otlp"]["protocols"].values()}
    loki = load_yaml(stack.config_file("loki", "/etc/loki/loki.yaml"))
    listen["loki"] = {loki["server"]["http_listen_port"]}
    listen["prometheus"] = {9090}
    listen["grafana"] = {3000}
    for name, ports in listen.items():
        assert stack.exposed(name) == ports, f"{name}: exposes {sorted(stack.exposed(name))}, listens on {sorted(ports)}"


def test_gatewatch_otlp_endpoints_point_at_the_collector(stack, collector):
    protocols = collector["receivers"]["otlp"]["protocols"]
    port_of = {"grpc": int(protocols["grpc"]["endpoint"].rsplit(":", 1)[1]),
               "http/protobuf": int(protocols["http"]["endpoint"].rsplit(":", 1)[1])}
    configs = _gatewatch_configs(stack)
    for name in GATEWATCH_SERVICES:
        if name == "loadgen":
            continue
        env = stack.services[name].get("environment") or {}
        otlp = (load_yaml(configs[name]).get("telemetry") or {}).get("otlp", {}) if name in configs else {}
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or otlp.get("endpoint")
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or otlp.get("protocol") or "http/protobuf"
        assert endpoint, f"{name}: no OTLP endpoint: its telemetry would go to local files"
        url = urlsplit(endpoint)
        assert (url.hostname, url.port) == ("otel-collector", port_of[protocol]), f"{name}: {endpoint} ({protocol})"
        for key, value in env.items():
            if key.startswith("OTEL_EXPORTER_OTLP_") and key.endswith("ENDPOINT"):
                assert urlsplit(value).hostname == "otel-collector", f"{name}: {key}={value}"


def test_gatewatch_configs_pass_validate(stack):
    files = [str(p) for p in _gatewatch_configs(stack).values()]
    assert len(files) == 2, files
    r = subprocess.run([sys.executable, "-m", "gatewatch", "validate", *files], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_load_generators_tokens_are_what_the_edge_accepts(stack):
    """The loadgen signs with GATEWATCH_DEMO_JWT_SECRET (compose env) and the edge's jwt policies verify with
    their inline key: if the two drift apart, every demo request would be a 401 and the scenario is gone."""
    import jwt as pyjwt

    from gatewatch.config import load_config

    env = stack.services["loadgen"]["environment"]
    secret = env["GATEWATCH_DEMO_JWT_SECRET"]
    edge = load_config(_gatewatch_configs(stack)["edge"])
    policies = [p for r in edge.edge.routes for p in r.policies if p.type == "jwt"]
    assert policies and {r.name for r in edge.edge.routes} == {"orders", "checkout", "catalog"}
    assert all(len(r.policies) == 2 for r in edge.edge.routes)
    for p in policies:
        assert [k.secret.get_secret_value() for k in p.keys] == [secret]
        token = pyjwt.encode({"sub": "u", "iss": p.issuer, "aud": p.audience, "exp": 2 ** 31}, secret, "HS256")
        pyjwt.decode(token, secret, algorithms=list(p.algorithms), audience=p.audience, issuer=p.issuer)
    loadgen = (COMPOSE_DIR / "scenario" / "loadgen.py").read_text()
    assert f'"GATEWATCH_DEMO_JWT_ISSUER", "{policies[0].issuer}"' in loadgen
    assert f'"GATEWATCH_DEMO_JWT_AUDIENCE", "{policies[0].audience}"' in loadgen


def test_prometheus_scrapes_every_gatewatch_admin_listener(stack):
    config = load_yaml(stack.config_file("prometheus", PROM_CONFIG))
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    for name, path in _gatewatch_configs(stack).items():
        port = load_yaml(path)["admin"]["address"].rsplit(":", 1)[1]
        assert f"{name}:{port}" in targets, f"{name}'s /metrics (exemplars) is not scraped"
    command = " ".join(stack.services["prometheus"]["command"])
    assert "--enable-feature=exemplar-storage" in command and "--web.enable-otlp-receiver" in command


# --- the Collector ----------------------------------------------------------------------------------------------

def test_collector_pipelines_reference_defined_components(collector):
    problems = []
    pipelines = collector["service"]["pipelines"]
    defined = {kind: set(collector.get(kind) or {}) for kind in ("receivers", "processors", "exporters", "connectors")}
    used: dict[str, set[str]] = {kind: set() for kind in defined}
    as_exporter: dict[str, set[str]] = {}
    as_receiver: dict[str, set[str]] = {}
    for pname, p in pipelines.items():
        assert _ctype(pname) in ("traces", "metrics", "logs"), pname
        for kind in ("receivers", "processors", "exporters"):
            for cid in p.get(kind, []):
                if kind != "processors" and cid in defined["connectors"]:
                    used["connectors"].add(cid)
                    (as_exporter if kind == "exporters" else as_receiver).setdefault(cid, set()).add(pname)
                elif cid in defined[kind]:
                    used[kind].add(cid)
                else:
                    problems.append(f"pipeline {pname}: {kind[:-1]} {cid!r} is not defined")
        assert p.get("receivers") and p.get("exporters"), f"pipeline {pname} needs receivers and exporters"
    for cid in defined["connectors"]:
        if not as_exporter.get(cid) or not as_receiver.get(cid):
            problems.append(f"connector {cid}: exporter in {sorted(as_exporter.get(cid, []))}, "
                            f"receiver in {sorted(as_receiver.get(cid, []))} (needs one of each)")
    for kind in defined:
        for cid in defined[kind] - used[kind]:
            problems.append(f"{kind[:-1]} {cid!r} is defined but no pipeline uses it")
    assert not problems, "\n".join(problems)


def test_collector_uses_current_component_names(collector):
    problems = []
    for kind, allowed in CURRENT_TYPES.items():
        for cid in collector.get(kind) or {}:
            t = _ctype(cid)
            if kind != "receivers" and t in DEPRECATED_TYPES:
                problems.append(f"{kind[:-1]} {cid!r}: deprecated name, use {DEPRECATED_TYPES[t]!r}")
            elif t not in allowed:
                problems.append(f"{kind[:-1]} {cid!r}: not a component this test knows at 0.165.x")
    assert not problems, "\n".join(problems)
    assert "extensions" not in collector.get("service", {}) or collector["service"]["extensions"] == []


def test_span_metrics_and_service_graph_see_every_span(collector):
    pipelines = collector["service"]["pipelines"]
    metric_connectors = {c for c in collector["connectors"] if _ctype(c) in ("span_metrics", "service_graph")}
    assert {_ctype(c) for c in metric_connectors} == {"span_metrics", "service_graph"}
    feeding = [n for n, p in pipelines.items() if metric_connectors & set(p["exporters"])]
    sampled = [n for n, p in pipelines.items()
               if any(_ctype(x) == "tail_sampling" for x in p.get("processors", []))]
    assert feeding and sampled
    for n in feeding:
        assert not any(_ctype(x) == "tail_sampling" for x in pipelines[n].get("processors", [])), n
        assert set(pipelines[n]["receivers"]) == {"otlp"}, f"{n} must get spans straight from the receiver"
    for n in sampled:
        assert set(pipelines[n]["receivers"]) == {"otlp"}
        assert any(_ctype(e) == "otlp_grpc" and "tempo" in collector["exporters"][e]["endpoint"]
                   for e in pipelines[n]["exporters"]), f"{n} does not export to Tempo"


def test_tail_sampling_keeps_errors_slow_retried_failed_over_and_a_baseline(collector):
    policies = {p["type"]: p for p in collector["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert 0 < policies["latency"]["latency"]["threshold_ms"] <= 1000
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert policies["numeric_attribute"]["numeric_attribute"]["key"] == "http.request.resend_count"
    by_key = {p["string_attribute"]["key"]: p["string_attribute"]
              for p in collector["processors"]["tail_sampling"]["policies"] if p["type"] == "string_attribute"}
    assert by_key["gatewatch.lb.excluded"]["enabled_regex_matching"] is True
    assert by_key["gatewatch.lb.excluded"]["values"] == [".*=(tried|ejected).*"]
    # requests that an event (failover, ejection, store outage) affected carry its id: always kept
    assert policies["ottl_condition"]["ottl_condition"]["span"] == [f'attributes["{Attr.EVENT_IDS}"] != nil']
    outcomes = by_key["gatewatch.outcome"]
    assert not outcomes.get("invert_match")  # inverted, spans without the attribute (backends) would match
    assert set(outcomes["values"]) == {o.value for o in Outcome} - {Outcome.PROXIED.value}


def test_collector_sends_each_signal_to_its_backend(collector):
    exporters = collector["exporters"]
    pipelines = collector["service"]["pipelines"]
    want = {"traces": "http://tempo:4317", "logs": "http://loki:3100/otlp", "metrics": "http://prometheus:9090/api/v1/otlp"}
    for pname, p in pipelines.items():
        for e in p["exporters"]:
            if e in exporters:
                endpoint = exporters[e]["endpoint"]
                endpoint = endpoint if "://" in endpoint else "http://" + endpoint
                assert endpoint == want[_ctype(pname)], f"{pname} → {e}: {endpoint}"


# --- Grafana ----------------------------------------------------------------------------------------------------

def _dashboards(stack: Stack) -> dict[str, Path]:
    providers_dir = stack.config_file("grafana", GRAFANA_DASHBOARD_PROVIDERS)
    assert providers_dir.is_dir(), f"{providers_dir.relative_to(REPO)} is missing (gatewatch dashboards build)"
    by_uid: dict[str, Path] = {}
    provider_files = sorted(providers_dir.glob("*.y*ml"))
    assert provider_files, f"no dashboard provider in {providers_dir.relative_to(REPO)}"
    for f in provider_files:
        for provider in load_yaml(f).get("providers", []):
            path = provider["options"]["path"]
            host_dir = stack.host_path("grafana", path)
            assert host_dir is not None, f"{f.name}: provider {provider.get('name')!r} path {path} is not mounted"
            files = sorted(host_dir.glob("*.json")) if host_dir.is_dir() else []
            assert files, f"{f.name}: provider path {path} ({host_dir.relative_to(REPO)}) holds no dashboard"
            for d in files:
                uid = json.loads(d.read_text(encoding="utf-8")).get("uid")
                assert uid, f"{d.relative_to(REPO)} has no uid"
                by_uid[uid] = d
    return by_uid


def test_grafana_dashboard_providers_load_existing_dashboards(stack):
    by_uid = _dashboards(stack)
    assert DASHBOARD_UIDS <= set(by_uid), f"missing dashboards: {sorted(DASHBOARD_UIDS - set(by_uid))}"


def test_grafana_home_dashboard_is_the_overview(stack):
    env = stack.services["grafana"]["environment"]
    home = stack.host_path("grafana", env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.is_file(), f"home dashboard {env['GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH']}"
    assert json.loads(home.read_text(encoding="utf-8"))["uid"] == "gatewatch-overview"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_grafana_datasources_point_at_the_stack(stack):
    ds_dir = stack.config_file("grafana", GRAFANA_DATASOURCES)
    files = sorted(ds_dir.glob("*.y*ml")) if ds_dir.is_dir() else []
    assert files, f"no datasource provisioning file in {ds_dir.relative_to(REPO)}"
    urls = {}
    for f in files:
        for ds in load_yaml(f).get("datasources", []):
            urls[ds.get("uid")] = ds.get("url")
    assert DATASOURCE_UIDS <= set(urls), urls
    assert {uid: urls[uid] for uid in DATASOURCE_UIDS} == {
        "prometheus": "http://prometheus:9090", "tempo": "http://tempo:3200", "loki": "http://loki:3100"}


def test_readme_documents_the_stack():
    text = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("docker compose -f compose/docker-compose.yml up", "http://localhost:3000", "http://localhost:8080",
                   "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert needle in text, needle


@pytest.mark.parametrize("text, expected", [
    ("endpoint: tempo:4317", {("tempo", 4317)}),
    ("url: http://loki:3100/otlp", {("loki", 3100)}),
    ("targets: ['edge:9901', \"balancer:9901\"]", {("edge", 9901), ("balancer", 9901)}),
    ("OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318", {("otel-collector", 4318)}),
    ("url: http://grafana", {("grafana", 80)}),
    ("address: 0.0.0.0:8080", set()),  # IP literals are never service names
    ("at 12:30, ratio 1:10", set()),
])
def test_host_ports_finds_every_reference(text, expected):
    assert host_ports(text) == expected

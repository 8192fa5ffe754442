"""The Kubernetes manifests (deploy/kubernetes, kustomize) and the Helm chart (deploy/helm/gatewatch), rendered as
a user would, checked object by object against the Kubernetes JSON schemas of one fixed version
(kubernetes-validate, strict: unknown fields are errors), and cross-checked where a mistake would only show in a
cluster: probes on the admin port the config binds, a grace period longer than preStop + drain + flush, selectors
that select the pods, Services whose targetPort is a container port, ServiceMonitors that select the admin Service,
and a config in every ConfigMap that `gatewatch validate` accepts.
"""

from __future__ import annotations

import base64
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import yaml

from gatewatch.config import ConfigError, GatewatchConfig, load_config, parse_address
from tests.deploy.render import K8S_VERSION, helm, helm_lint, kustomize

TELEMETRY_FLUSH_S = 3  # Runtime.stop: telemetry.stop(3.0) after the listeners drained
TIERS = ("edge", "balancer")


@pytest.fixture(scope="module", params=["kustomize", "helm"])
def rendered(request) -> list[dict]:
    return kustomize() if request.param == "kustomize" else helm()


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    assert selector, "an empty selector selects everything"
    return all(labels.get(k) == v for k, v in selector.items())


def container(deploy: dict) -> dict:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def tier_config(objs: list[dict], deploy: dict, tmp_path) -> GatewatchConfig:
    """The config the pod runs, loaded as `gatewatch run -c` would: the ConfigMap mounted where `-c` points, with
    files under the pod's Secret mounts (the admin token) replaced by stand-ins holding a valid token."""
    pod = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    config_path = PurePosixPath(c["args"][c["args"].index("-c") + 1])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {PurePosixPath(m["mountPath"]): volumes[m["name"]] for m in c["volumeMounts"]}
    cm_volume = mounts[config_path.parent]
    cm = named(objs, "ConfigMap", cm_volume["configMap"]["name"])
    text = cm["data"][config_path.name]
    data = yaml.safe_load(text)
    token_file = data.get("admin", {}).get("token_file")
    if token_file:
        secret_mount = mounts.get(PurePosixPath(token_file).parent)
        assert secret_mount is not None and "secret" in secret_mount, \
            f"admin.token_file {token_file} is not in a Secret volume of the pod"
        stand_in = tmp_path / f"{deploy['metadata']['name']}-token"
        stand_in.write_text(base64.urlsafe_b64encode(b"k8s-manifest-test-token-0123456789").decode())
        data["admin"]["token_file"] = str(stand_in)
    path = tmp_path / f"{deploy['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        return load_config(path)
    except ConfigError as err:
        pytest.fail(f"ConfigMap {cm['metadata']['name']} is not a valid gatewatch config:\n" + "\n".join(err.problems))


def test_every_object_matches_the_kubernetes_schema(rendered):
    kinds = {o["kind"] for o in rendered}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor", "ServiceAccount"} <= kinds
    for obj in rendered:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: no schema ships with the validator; checked field by field below
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {'.'.join(map(str, err.path))}: {err.message}")


def test_service_monitors_have_the_fields_the_operator_requires(rendered):
    monitors = by_kind(rendered, "ServiceMonitor")
    assert len(monitors) == len(TIERS)
    for sm in monitors:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        spec = sm["spec"]
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
        assert isinstance(spec["selector"]["matchLabels"], dict) and spec["selector"]["matchLabels"]
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "enableHttp2",
                               "honorLabels", "bearerTokenSecret", "authorization"}
            assert isinstance(ep["port"], str) and ep["path"] == "/metrics"
            for key in ("interval", "scrapeTimeout"):
                assert str(ep[key])[:-1].isdigit() and str(ep[key]).endswith("s"), f"{key}: a duration like 15s"
            assert int(ep["scrapeTimeout"][:-1]) <= int(ep["interval"][:-1])


def test_each_tier_is_wired_consistently(rendered, tmp_path):
    deployments = by_kind(rendered, "Deployment")
    assert sorted(d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments) == sorted(TIERS)
    services, monitors = by_kind(rendered, "Service"), by_kind(rendered, "ServiceMonitor")
    for deploy in deployments:
        name = deploy["metadata"]["name"]
        spec, pod = deploy["spec"], deploy["spec"]["template"]["spec"]
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert selects(spec["selector"]["matchLabels"], labels)
        c = container(deploy)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        cfg = tier_config(rendered, deploy, tmp_path)
        tier = cfg.edge or cfg.balancer

        # The probes ask the admin listener, on the port the config binds, on an address kubelet can reach.
        admin_host, admin_port = parse_address(cfg.admin.address)
        assert admin_host == "0.0.0.0" and ports["admin"] == admin_port
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ("admin", admin_port), f"{name} {probe}"
            assert c[probe]["timeoutSeconds"] <= c[probe]["periodSeconds"]
        # The traffic port is the tier's listener.
        assert [parse_address(lst.address)[1] for lst in tier.listeners] == [ports["http"]]

        # Shutdown: preStop (endpoints removed) + readiness delay + in-flight grace + flush < the grace period.
        sleep_s = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        needed = sleep_s + cfg.drain.readiness_delay_s + cfg.drain.grace_s + TELEMETRY_FLUSH_S
        assert needed < pod["terminationGracePeriodSeconds"], \
            f"{name}: preStop {sleep_s} + drain {cfg.drain.readiness_delay_s}+{cfg.drain.grace_s} + flush " \
            f"{TELEMETRY_FLUSH_S} must be below terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}"

        # Non-root, read-only, no capabilities, resources set (the HPA computes utilisation of requests.cpu).
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        env = {e["name"]: e for e in c["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http")

        # PDB and HPA point at these pods; the HPA owns replicas.
        (pdb,) = [p for p in by_kind(rendered, "PodDisruptionBudget")
                  if selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert pdb["spec"].get("maxUnavailable") or pdb["spec"].get("minAvailable")
        (hpa,) = [h for h in by_kind(rendered, "HorizontalPodAutoscaler")
                  if h["spec"]["scaleTargetRef"]["name"] == name]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment" and "replicas" not in spec
        assert hpa["spec"]["minReplicas"] >= 2
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

        # Services select these pods only, and target container ports; one of them exposes admin for scraping.
        mine = [s for s in services if selects(s["spec"]["selector"], labels)]
        assert len(mine) == 2, f"{name}: expected a traffic and an admin Service"
        for svc in mine:
            for p in svc["spec"]["ports"]:
                assert p["targetPort"] in ports or p["targetPort"] in ports.values(), \
                    f"Service {svc['metadata']['name']} targetPort {p['targetPort']} is no container port"
        admin_svcs = [s for s in mine if any(p["targetPort"] in ("admin", admin_port) for p in s["spec"]["ports"])]
        assert len(admin_svcs) == 1 and len(admin_svcs[0]["spec"]["ports"]) == 1, "admin stays off the traffic Service"
        admin_svc = admin_svcs[0]
        # Exactly one ServiceMonitor selects this tier's admin Service, on a port it has, and it selects no other.
        sms = [m for m in monitors if selects(m["spec"]["selector"]["matchLabels"], admin_svc["metadata"]["labels"])]
        assert len(sms) == 1, f"{name}: {len(sms)} ServiceMonitors select {admin_svc['metadata']['name']}"
        svc_ports = {p["name"] for p in admin_svc["spec"]["ports"]}
        assert {ep["port"] for ep in sms[0]["spec"]["endpoints"]} <= svc_ports
        others = [s for s in services if s is not admin_svc
                  and selects(sms[0]["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        assert not others, f"ServiceMonitor {sms[0]['metadata']['name']} also selects {others[0]['metadata']['name']}"


def test_the_edge_sends_to_the_balancer_tier_service(rendered, tmp_path):
    (edge,) = [d for d in by_kind(rendered, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"]
    cfg = tier_config(rendered, edge, tmp_path)
    services = {s["metadata"]["name"]: s for s in by_kind(rendered, "Service")}
    for up in cfg.edge.upstreams:
        host_port = up.url.split("://", 1)[1]
        host, port = parse_address(host_port)
        svc = services.get(host.split(".")[0])
        assert svc is not None, f"edge upstream {up.url}: no Service {host!r} in the manifests"
        assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "balancer"
        assert port in [p["port"] for p in svc["spec"]["ports"]]


def test_balancer_discovery_has_read_access_to_endpointslices(rendered):
    (bal,) = [d for d in by_kind(rendered, "Deployment")
              if d["metadata"]["labels"]["app.kubernetes.io/component"] == "balancer"]
    pod = bal["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    (binding,) = [b for b in by_kind(rendered, "RoleBinding")
                  if any(s["name"] == pod["serviceAccountName"] for s in b["subjects"])]
    role = named(rendered, "Role", binding["roleRef"]["name"])
    (rule,) = role["rules"]
    assert rule["resources"] == ["endpointslices"] and set(rule["verbs"]) == {"get", "list", "watch"}


def test_kustomize_config_change_rolls_the_pods():
    """The generated ConfigMap's name carries a hash of its content and the Deployment mounts that name."""
    objs = kustomize()
    for deploy in by_kind(objs, "Deployment"):
        (vol,) = [v for v in deploy["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
        cm_name = vol["configMap"]["name"]
        assert cm_name.startswith("gatewatch-config-") and len(cm_name.rsplit("-", 1)[1]) == 10
        named(objs, "ConfigMap", cm_name)


def _deployment(objs, tier):
    (d,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == tier]
    return d


def test_helm_config_change_rolls_the_pods():
    before = helm()
    after = helm({"edge": {"config": {"telemetry": {"service_name": "edge-renamed"}}}})

    def checksum(objs, tier):
        return _deployment(objs, tier)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(before, "edge") != checksum(after, "edge")
    assert checksum(before, "balancer") == checksum(after, "balancer")


def test_helm_refuses_a_grace_period_shorter_than_the_drain():
    with pytest.raises(Exception, match="terminationGracePeriodSeconds"):
        helm({"shutdown": {"terminationGracePeriodSeconds": 20}})
    with pytest.raises(Exception, match="drain.grace_s"):
        helm({"balancer": {"config": {"drain": {"grace_s": 60}}}})


def test_helm_values_reach_the_objects():
    objs = helm({"balancer": {"enabled": False}, "serviceMonitor": {"enabled": False},
                 "image": {"repository": "registry.example/gatewatch", "tag": "9.9.9"},
                 "adminToken": {"existingSecret": "ops-admin-token"}}, release="gatewatch")
    assert [d["metadata"]["name"] for d in by_kind(objs, "Deployment")] == ["gatewatch-edge"]
    assert not by_kind(objs, "ServiceMonitor") and not by_kind(objs, "Secret")
    edge = _deployment(objs, "edge")
    assert container(edge)["image"] == "registry.example/gatewatch:9.9.9"
    (secret_vol,) = [v for v in edge["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert secret_vol["secret"]["secretName"] == "ops-admin-token"


def test_helm_lint_is_clean():
    report = helm_lint()
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # 1: INFO (e.g. "icon is recommended")

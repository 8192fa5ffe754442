"""Static checks of the generated boards, rules and provisioning: names, labels and values come from
`telemetry/names.py`; the committed copy matches the generator; the layout and uids the compose stack relies on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gatewatch.dashboards.build import DATASOURCES_FILE, GENERATED, PROVIDER_FILE, RULES_FILE, render_all
from gatewatch.dashboards.options import DEFAULT, BuildOptions, OptionsError, SloOptions, load_options
from gatewatch.telemetry import names
from gatewatch.telemetry.names import (Attr, CircuitState, DecisionKind, DropReason, EndpointState, Exclusion,
                                       FailoverKind, Label, Layer, Metric, Outcome, PolicyReason, Reason,
                                       TelemetrySignal, Verdict)
from tests.dashboards.queries import (all_queries, dashboards, promql_labels, promql_matchers, promql_metrics,
                                      variable_parts)

REPO = Path(__file__).resolve().parents[2]
FILES = render_all(DEFAULT)
QUERIES = all_queries(FILES)

# Labels Prometheus or the exposition add, not Gatewatch: `le` (histogram buckets), `instance`/`job` (the scrape
# target).
TARGET_LABELS = {"le", "instance", "job"}
NAMED_LABELS = {v for k, v in vars(Label).items() if not k.startswith("_")}
EXPOSED = {f"{m}{suffix}" for k, m in vars(Metric).items() if not k.startswith("_")
           for suffix in ("", "_total", "_bucket", "_count", "_sum", "_info")}
# Closed vocabularies: a label's values must come from these enums.
ENUM_LABELS = {
    Label.LAYER: set(Layer),
    Label.OUTCOME: set(Outcome),
    Label.STATE: set(EndpointState) | set(CircuitState),
    Label.VERDICT: set(Verdict),
    Label.REASON: set(Reason) | set(PolicyReason) | set(Exclusion) | set(DropReason) | set(names.H2Reason)
    | set(names.DrainClose) | set(names.AdminAuthFailure) | set(names.WebSocketEnd),
    Label.STEP: set(names.DrainStep),
    Label.EVENT: set(names.H2Event),
    Label.DECISION: set(DecisionKind),
    Label.SIGNAL: set(TelemetrySignal),
    Label.FAILOVER: set(FailoverKind),
}


def _promql(q):
    if q.kind == "variable":
        selector, label = variable_parts(q.text)
        return selector, {label}
    return q.text, set()


PROMQL = [q for q in QUERIES if q.kind in ("promql", "rule", "variable")]


@pytest.mark.parametrize("q", PROMQL, ids=[q.where for q in PROMQL])
def test_every_metric_and_label_exists_in_the_names_module(q):
    expr, extra_labels = _promql(q)
    metrics = promql_metrics(expr)
    assert metrics, f"{q.where}: no metric found in {expr!r}"
    assert metrics <= EXPOSED, f"{q.where}: metrics not in telemetry.names.Metric: {metrics - EXPOSED}"
    labels = promql_labels(expr) | extra_labels
    unknown = labels - NAMED_LABELS - TARGET_LABELS
    assert not unknown, f"{q.where}: labels not in telemetry.names.Label: {unknown}"


@pytest.mark.parametrize("q", PROMQL, ids=[q.where for q in PROMQL])
def test_label_values_come_from_the_closed_vocabularies(q):
    expr, _ = _promql(q)
    for label, op, value in promql_matchers(expr):
        if label not in ENUM_LABELS:
            continue
        allowed = {str(v) for v in ENUM_LABELS[label]}
        pattern = value.replace("\\.", ".") if op in ("=", "!=") else value
        if op in ("=", "!="):
            assert pattern in allowed, f"{q.where}: {label}={value!r} is not in the enum"
        elif re.fullmatch(r"[\w\\.|-]+", value):  # a plain alternation: every member must exist
            members = {m.replace("\\.", ".") for m in value.split("|")}
            assert members <= allowed, f"{q.where}: {label}=~ members not in the enum: {members - allowed}"
        else:
            assert any(re.fullmatch(value, v) for v in allowed), f"{q.where}: {label}=~{value!r} matches nothing"


def test_legends_links_and_annotations_name_existing_labels():
    for q in QUERIES:
        if q.kind not in ("legend", "link"):
            continue
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", q.text)) | set(re.findall(r"__field\.labels\.(\w+)", q.text))
        used |= set(re.findall(r"\$labels\.(\w+)", q.text))
        assert used <= NAMED_LABELS | TARGET_LABELS, f"{q.where}: unknown labels {used - NAMED_LABELS}"


def test_logql_and_traceql_use_attribute_names():
    attrs = {v for k, v in vars(Attr).items() if not k.startswith("_")}
    loki_fields = {a.replace(".", "_") for a in attrs}
    for q in QUERIES:
        if q.kind == "logql":
            stream, _, pipeline = q.text.partition("} |")
            fields = set(re.findall(r"(\w+)\s*(?:=~|!=|=)", pipeline))
            assert fields <= loki_fields, f"{q.where}: not Attr names: {fields - loki_fields}"
        elif q.kind == "traceql":
            used = set(re.findall(r"span\.([\w.]+)", q.text))
            assert used <= attrs, f"{q.where}: not Attr names: {used - attrs}"


def test_generator_sources_never_spell_a_metric_name():
    """Dashboards import names from telemetry.names: no source file spells an exposed metric name itself."""
    for src in (REPO / "dashboards").glob("*.py"):
        text = src.read_text()
        spelled = {m for m in EXPOSED if re.search(rf"[\"'`]{m}[\"'{{\[]", text)}
        assert not spelled, f"{src.name} hard-codes {spelled}: use telemetry.names.Metric"


def test_committed_copy_matches_the_generator():
    stale = []
    for rel, text in FILES.items():
        path = GENERATED / rel
        if not path.exists() or path.read_text() != text:
            stale.append(rel)
    extra = [str(p.relative_to(GENERATED)) for p in GENERATED.rglob("*") if p.is_file()
             and str(p.relative_to(GENERATED)) not in FILES]
    assert not stale and not extra, (
        f"dashboards/generated/ is out of date (changed: {stale}, not generated: {extra}); regenerate with "
        f"`gatewatch dashboards build --out dashboards/generated` and commit the result")


def test_layout_uids_and_links_the_compose_stack_relies_on():
    assert set(dashboards(FILES)) == {"gatewatch-overview", "gatewatch-journey", "gatewatch-balancer",
                                      "gatewatch-decisions", "gatewatch-self", "gatewatch-traffic",
                                      "gatewatch-protocols"}
    for uid, board in dashboards(FILES).items():
        assert board["uid"] == uid and "gatewatch" in board["tags"]
        nav = [link for link in board["links"] if link["type"] == "dashboards"]
        assert nav and nav[0]["keepTime"] and nav[0]["includeVars"], uid  # time range and variables carried
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for p in board["panels"]:
            assert p["type"] == "row" or p.get("description"), f"{uid}/{p['title']}: no description"
    ds = yaml.safe_load(FILES[DATASOURCES_FILE])["datasources"]
    by_uid = {d["uid"]: d for d in ds}
    assert {u: d["url"] for u, d in by_uid.items()} == {
        "prometheus": "http://prometheus:9090", "tempo": "http://tempo:3200", "loki": "http://loki:3100"}
    assert by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo", "urlDisplayLabel": "Trace in Tempo"}]
    tempo = by_uid["tempo"]["jsonData"]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus" and tempo["nodeGraph"]["enabled"] is True
    assert by_uid["loki"]["jsonData"]["derivedFields"][0]["datasourceUid"] == "tempo"
    provider = yaml.safe_load(FILES[PROVIDER_FILE])["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards" and provider["type"] == "file"


def test_every_alert_has_summary_description_runbook_and_dashboard_link():
    rules = yaml.safe_load(FILES[RULES_FILE])["groups"][0]["rules"]
    names_ = {r["alert"] for r in rules}
    for expected in ("GatewatchFailoverSpike", "GatewatchEjectionsHigh", "GatewatchPoolNoHealthyInstance",
                     "GatewatchPoolDegraded", "GatewatchPoolPanicMode", "GatewatchErrorBudgetBurnFast",
                     "GatewatchErrorBudgetBurnSlow", "GatewatchLatencyBudgetBurnFast",
                     "GatewatchLatencyBudgetBurnSlow", "GatewatchRetryBudgetExhausted",
                     "GatewatchEjectedWhileProbesPass",
                     "GatewatchRateLimitStoreUnavailable", "GatewatchTelemetryDropping", "GatewatchBalancerSilent"):
        assert expected in names_
    for r in rules:
        a = r["annotations"]
        assert a["summary"] and a["description"] and a["runbook"], r["alert"]
        assert re.match(r"http://localhost:3000/d/gatewatch-[a-z]+\?", a["dashboard"]), r["alert"]
        assert r["labels"]["severity"] in ("page", "ticket") and r["for"], r["alert"]


def test_slo_target_changes_the_burn_thresholds():
    default = yaml.safe_load(FILES[RULES_FILE])["groups"][0]["rules"]
    other = yaml.safe_load(render_all(BuildOptions(slo=SloOptions(availability_percent=99.5)))[RULES_FILE])
    fast = {r["alert"]: r["expr"] for r in other["groups"][0]["rules"]}["GatewatchErrorBudgetBurnFast"]
    assert "(14.4 * 0.005)" in fast
    assert "(14.4 * 0.001)" in {r["alert"]: r["expr"] for r in default}["GatewatchErrorBudgetBurnFast"]


def test_options_file_errors_name_the_field(tmp_path):
    path = tmp_path / "opts.yaml"
    path.write_text("slo: {latency_threshold_s: 0.3, availability_percent: 100}\nextra: 1\n")
    with pytest.raises(OptionsError) as err:
        load_options(path)
    text = "\n".join(err.value.problems)
    assert "slo.latency_threshold_s" in text and "slo.availability_percent" in text and "extra" in text


def test_cli_builds_the_documented_layout(tmp_path):
    opts = tmp_path / "opts.yaml"
    opts.write_text("slo: {availability_percent: 99.5}\ngrafana_url: https://grafana.example.com\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "gatewatch", "dashboards", "build", "--out", str(out), "-c", str(opts),
                          "--slo", "99.95"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(FILES), got
    rules = (out / RULES_FILE).read_text()
    assert "(14.4 * 0.0005)" in rules and "https://grafana.example.com/d/gatewatch-" in rules
    json.loads((out / "grafana/dashboards/gatewatch-journey.json").read_text())
    bad = subprocess.run([sys.executable, "-m", "gatewatch", "dashboards", "build", "--out", str(tmp_path / "x"),
                          "--slo", "100"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "--slo" in bad.stderr and not (tmp_path / "x").exists()


def test_names_module_was_only_read():
    assert names.Metric.FAILOVERS == "gatewatch_failovers"  # the contract the rules are written against


@pytest.mark.parametrize("bound, spellings", [(0.5, ["0.5"]), (1.0, ["1", "1.0"]), (10.0, ["10", "10.0"])])
def test_latency_bucket_matcher_works_with_prometheus_2_and_3(bound, spellings):
    """Prometheus 2 keeps `le` as exposed (`1.0`), Prometheus 3 normalises it (`1`): the SLO rule matches both."""
    from gatewatch.dashboards.alerts import le_regex

    pattern = le_regex(bound).replace("\\\\", "\\")  # the PromQL string literal's unescaped regex
    assert all(re.fullmatch(pattern, s) for s in spellings)
    assert not re.fullmatch(pattern, "0.25")


def test_the_sdk_reads_every_board_back_unchanged():
    """Each board is valid for grafana-foundation-sdk's dashboard model: decoding and re-encoding is lossless."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    for uid, board in dashboards(FILES).items():
        again = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
        assert again == board, uid


def test_probe_results_the_rules_match_are_the_ones_the_runtime_writes():
    """telemetry.names has no enum for gatewatch_health_probes_total's `result`: the two values the rules and panels
    match must be exactly the ones the runtime creates for a pool with active health checks."""
    from gatewatch.app.series import init_series
    from gatewatch.config import GatewatchConfig
    from gatewatch.dashboards.promql import PROBE_FAIL, PROBE_PASS
    from gatewatch.telemetry.metrics import Metrics

    cfg = GatewatchConfig.model_validate({"balancer": {
        "listeners": [{"name": "internal", "address": "127.0.0.1:0"}],
        "routes": [{"name": "shop", "upstream": "shop"}],
        "pools": [{"name": "shop", "instances": [{"id": "a", "host": "127.0.0.1", "port": 1}],
                   "health_check": {"path": "/healthz"}}]}})
    m = Metrics()
    init_series(m, cfg)
    results = {s.labels[Label.RESULT] for family in m.registry.collect() if family.name == Metric.HEALTH_PROBES
               for s in family.samples if s.name.endswith("_total")}
    assert results == {PROBE_PASS, PROBE_FAIL}


def test_links_between_events_and_traces_use_attribute_names():
    """Loki → Tempo: an event id opens the requests naming it in gatewatch.event.ids; Tempo → Loki: a trace's
    decision logs and the events listing it among their causes. Every field and attribute is an Attr name."""
    from gatewatch.dashboards.loki import field

    ds = {d["uid"]: d for d in yaml.safe_load(FILES[DATASOURCES_FILE])["datasources"]}
    derived = {f["name"]: f for f in ds["loki"]["jsonData"]["derivedFields"]}
    assert derived["trace_id"]["matcherRegex"] == "^trace_id$$"  # `$$`: a literal `$` for Grafana's provisioning
    event = derived[field(Attr.EVENT_ID)]
    assert event["matcherRegex"] == f"^{field(Attr.EVENT_ID)}$$" and event["datasourceUid"] == "tempo"
    assert event["url"] == f'{{ span.{Attr.EVENT_IDS} = "$${{__value.raw}}" }}'
    to_logs = ds["tempo"]["jsonData"]["tracesToLogsV2"]["query"]
    assert f'{field(Attr.EVENT_TRACE_IDS)}=~".*$${{__trace.traceId}}.*"' in to_logs
    assert "__span.tags" not in to_logs  # a span attribute absent from a span would hide the link on that span

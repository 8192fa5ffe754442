"""The generated alert rules under Prometheus's own tools: `promtool check rules`, and `promtool test rules` with a
firing case and silent cases (below threshold, and one flap) for every alert.

The unit tests pin expressions, `for:` and labels. They run against a copy of the shipped rule file without its
annotations — promtool compares rendered annotations verbatim, and `promtool check rules` already parses every
annotation template — plus one test against the shipped file as is, with its annotations rendered.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gatewatch.dashboards.build import GENERATED, RULES_FILE
from tests.dashboards.prom import binary

RULES = GENERATED / RULES_FILE
SHIPPED = yaml.safe_load(RULES.read_text())


@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool")


# Series the cases use (1-minute samples unless a case says otherwise).
ATTEMPTS = 'http_client_request_duration_seconds_count{gatewatch_layer="balancer",gatewatch_upstream="shop",' \
           'gatewatch_instance="a"}'
FAILOVERS = 'gatewatch_failovers_total{gatewatch_pool="shop",reason="failover.retry_other_instance"}'
EJECTIONS = 'gatewatch_ejections_total{gatewatch_pool="shop",gatewatch_instance="a",reason="outlier.consecutive_5xx"}'
HEALTHY = 'gatewatch_endpoints{gatewatch_pool="shop",state="healthy"}'
UNHEALTHY = 'gatewatch_endpoints{gatewatch_pool="shop",state="unhealthy"}'
PANIC = 'gatewatch_pool_panic_mode{gatewatch_pool="shop"}'
EDGE_OK = 'http_server_request_duration_seconds_count{gatewatch_layer="edge",gatewatch_route="orders",' \
          'http_response_status_code="200"}'
EDGE_5XX = 'http_server_request_duration_seconds_count{gatewatch_layer="edge",gatewatch_route="orders",' \
           'http_response_status_code="502"}'
EDGE_FAST = 'http_server_request_duration_seconds_bucket{gatewatch_layer="edge",gatewatch_route="orders",' \
            'http_response_status_code="200",le="0.5"}'
EXHAUSTED = 'gatewatch_retry_budget_exhausted_total{gatewatch_route="orders",gatewatch_upstream="shop"}'
STORE = 'gatewatch_policy_verdicts_total{gatewatch_route="orders",gatewatch_policy="limit",' \
        'gatewatch_policy_type="rate_limit",verdict="error",reason="%s"}'
EXPORTED = 'gatewatch_telemetry_exported_total{signal="traces"}'
DROPPED = 'gatewatch_telemetry_dropped_total{signal="traces",reason="queue_full"}'
ENDPOINTS = 'gatewatch_endpoints{gatewatch_pool="shop",state="healthy"}'

POOL = {"gatewatch_pool": "shop"}


@dataclass
class Case:
    alert: str
    name: str
    series: dict[str, str]
    eval_at: list[str]
    fires: dict | None = None  # expected labels (besides severity/service) at the last eval time, None = silent
    interval: str = "1m"
    extra: dict = field(default_factory=dict)


CASES = [
    Case("GatewatchFailoverSpike", "10 % of attempts fail over for minutes",
         {ATTEMPTS: "0+600x20", FAILOVERS: "0+60x20"}, ["5m"], POOL),
    Case("GatewatchFailoverSpike", "2 % failover share stays below 5 %",
         {ATTEMPTS: "0+600x20", FAILOVERS: "0+12x20"}, ["10m"]),
    Case("GatewatchFailoverSpike", "one flap: 100 failovers in one minute",
         {ATTEMPTS: "0+600x20", FAILOVERS: "0x5 100x15"}, ["6m", "8m", "10m"]),
    Case("GatewatchFailoverSpike", "a quiet pool (0.1 req/s) with half its attempts failing over",
         {ATTEMPTS: "0+6x20", FAILOVERS: "0+3x20"}, ["10m"]),
    Case("GatewatchEjectionsHigh", "an ejection every minute",
         {EJECTIONS: "0+1x30"}, ["10m"], POOL),
    Case("GatewatchEjectionsHigh", "one flap: a single ejection",
         {EJECTIONS: "0x3 1x27"}, ["5m", "10m"]),
    Case("GatewatchEjectionsHigh", "two ejections in 15 minutes",
         {EJECTIONS: "0x3 1x3 2x24"}, ["10m"]),
    Case("GatewatchPoolNoHealthyInstance", "every instance unhealthy",
         {HEALTHY: "3 3 0x10", UNHEALTHY: "0 0 3x10"}, ["5m"], POOL),
    Case("GatewatchPoolNoHealthyInstance", "no `healthy` series at all (only unhealthy ones)",
         {UNHEALTHY: "3x10"}, ["5m"], POOL),
    Case("GatewatchPoolNoHealthyInstance", "one healthy instance left",
         {HEALTHY: "1x10", UNHEALTHY: "2x10"}, ["5m"]),
    Case("GatewatchPoolNoHealthyInstance", "one flap: all down for a single evaluation",
         {HEALTHY: "3 0 3x10", UNHEALTHY: "0 3 0x10"}, ["2m", "5m"]),
    Case("GatewatchPoolDegraded", "a third of the pool healthy",
         {HEALTHY: "1x20", UNHEALTHY: "2x20"}, ["10m"], POOL),
    Case("GatewatchPoolDegraded", "two thirds healthy",
         {HEALTHY: "2x20", UNHEALTHY: "1x20"}, ["10m"]),
    Case("GatewatchPoolDegraded", "one flap: degraded for three minutes",
         {HEALTHY: "1x3 3x17", UNHEALTHY: "2x3 0x17"}, ["3m", "10m"]),
    Case("GatewatchPoolPanicMode", "panic mode for minutes", {PANIC: "1x10"}, ["5m"], POOL),
    Case("GatewatchPoolPanicMode", "never in panic", {PANIC: "0x10"}, ["5m"]),
    Case("GatewatchPoolPanicMode", "one flap: one minute of panic", {PANIC: "0 1 0x10"}, ["2m", "5m"]),
    Case("GatewatchErrorBudgetBurnFast", "2 % 5xx (budget 0.1 %, fast limit 1.44 %)",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0+12x120"}, ["10m"], {}),
    Case("GatewatchErrorBudgetBurnFast", "0.5 % 5xx", {EDGE_OK: "0+600x120", EDGE_5XX: "0+3x120"}, ["30m"]),
    Case("GatewatchErrorBudgetBurnFast", "one flap: one minute at 5 % 5xx after an hour of none",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0x60 30x60"}, ["61m", "63m", "70m"]),
    Case("GatewatchErrorBudgetBurnSlow", "1 % 5xx for an hour (slow limit 0.6 %)",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0+6x120"}, ["60m"], {}),
    Case("GatewatchErrorBudgetBurnSlow", "0.5 % 5xx", {EDGE_OK: "0+600x120", EDGE_5XX: "0+3x120"}, ["60m"]),
    Case("GatewatchLatencyBudgetBurnFast", "20 % slower than 0.5 s (budget 1 %, fast limit 14.4 %)",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+480x120"}, ["10m"], {}),
    Case("GatewatchLatencyBudgetBurnFast", "10 % slow: a slow burn, not a fast one",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+540x120"}, ["30m"]),
    Case("GatewatchLatencyBudgetBurnSlow", "10 % slow for an hour (slow limit 6 %)",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+540x120"}, ["60m"], {}),
    Case("GatewatchLatencyBudgetBurnSlow", "0.5 % slow", {EDGE_OK: "0+600x120", EDGE_FAST: "0+597x120"}, ["60m"]),
    Case("GatewatchRetryBudgetExhausted", "6 refused retries a minute",
         {EXHAUSTED: "0+6x20"}, ["10m"], {"gatewatch_route": "orders", "gatewatch_upstream": "shop"}),
    Case("GatewatchRetryBudgetExhausted", "one refused retry a minute", {EXHAUSTED: "0+1x20"}, ["10m"]),
    Case("GatewatchRetryBudgetExhausted", "one flap: a burst of 10 refusals", {EXHAUSTED: "0x5 10x15"}, ["8m", "12m"]),
    Case("GatewatchRateLimitStoreUnavailable", "store errors every scrape for minutes",
         {STORE % "ratelimit.store_unavailable": "0+15x40"}, ["8m"],
         {"gatewatch_route": "orders", "gatewatch_policy": "limit"}, interval="15s"),
    Case("GatewatchRateLimitStoreUnavailable", "limits exceeded, store fine",
         {STORE % "ratelimit.exceeded": "0+15x40"}, ["8m"], interval="15s"),
    Case("GatewatchRateLimitStoreUnavailable", "one flap: errors during 30 s",
         {STORE % "ratelimit.store_unavailable": "0x8 5 10 15x30"}, ["3m", "5m", "8m"], interval="15s"),
    Case("GatewatchTelemetryDropping", "9 % of spans dropped", {EXPORTED: "0+600x40", DROPPED: "0+60x40"},
         ["25m"], {"signal": "traces"}),
    Case("GatewatchTelemetryDropping", "0.5 % dropped", {EXPORTED: "0+600x40", DROPPED: "0+3x40"}, ["25m"]),
    Case("GatewatchTelemetryDropping", "nothing dropped (no dropped series at all)", {EXPORTED: "0+600x40"}, ["25m"]),
    Case("GatewatchTelemetryDropping", "one flap: 300 drops at once", {EXPORTED: "0+600x40", DROPPED: "0x10 300x30"},
         ["15m", "21m", "25m"]),
    Case("GatewatchBalancerSilent", "the balancer's series go stale", {ENDPOINTS: "3 3 3 stale"}, ["10m"], {}),
    Case("GatewatchBalancerSilent", "the balancer reports", {ENDPOINTS: "3x20"}, ["10m"]),
    Case("GatewatchBalancerSilent", "one flap: one failed scrape", {ENDPOINTS: "3 3 stale 3x20"}, ["3m", "10m"]),
]


def _expected(case: Case, at: str, severity: str) -> list[dict]:
    if case.fires is None or at != case.eval_at[-1]:
        return []
    return [{"exp_labels": {**case.fires, "severity": severity, "service": "gatewatch"}}]


def _test_file(rules_path: Path, cases: list[Case]) -> dict:
    severity = {r["alert"]: r["labels"]["severity"] for r in SHIPPED["groups"][0]["rules"]}
    tests = []
    for c in cases:
        tests.append({
            "name": f"{c.alert}: {c.name}",
            "interval": c.interval,
            "input_series": [{"series": s, "values": v} for s, v in c.series.items()],
            "alert_rule_test": [{"eval_time": at, "alertname": c.alert, "exp_alerts": _expected(c, at, severity[c.alert])}
                                for at in c.eval_at],
        })
    return {"rule_files": [str(rules_path)], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_firing_and_a_silent_case():
    alerts = {r["alert"] for r in SHIPPED["groups"][0]["rules"]}
    firing = {c.alert for c in CASES if c.fires is not None}
    silent = {c.alert for c in CASES if c.fires is None}
    assert firing == alerts and silent == alerts, (alerts - firing, alerts - silent)
    # Every page-severity alert also has a flap case that must stay silent.
    pages = {r["alert"] for r in SHIPPED["groups"][0]["rules"] if r["labels"]["severity"] == "page"}
    flaps = {c.alert for c in CASES if c.name.startswith("one flap") and c.fires is None}
    assert pages - {"GatewatchErrorBudgetBurnFast"} <= flaps | {"GatewatchLatencyBudgetBurnFast"}


def test_promtool_check_rules(promtool):
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(SHIPPED['groups'][0]['rules'])} rules found" in run.stdout


def test_promtool_unit_tests_fire_and_stay_silent(promtool, tmp_path):
    stripped = yaml.safe_load(RULES.read_text())
    for r in stripped["groups"][0]["rules"]:
        r.pop("annotations")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(stripped, sort_keys=False))
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(_test_file(rules, CASES), sort_keys=False, width=200))
    run = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "SUCCESS" in run.stdout


def test_shipped_file_renders_its_annotations(promtool, tmp_path):
    """The rule file exactly as shipped: the no-healthy-instance page, annotations rendered for pool `shop`."""
    rule = next(r for r in SHIPPED["groups"][0]["rules"] if r["alert"] == "GatewatchPoolNoHealthyInstance")
    annotations = {k: v.replace("{{ $labels.gatewatch_pool }}", "shop") for k, v in rule["annotations"].items()}
    case = next(c for c in CASES if c.alert == rule["alert"] and c.fires is not None)
    doc = _test_file(RULES, [case])
    doc["tests"][0]["alert_rule_test"][-1]["exp_alerts"][0]["exp_annotations"] = annotations
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(doc, sort_keys=False, width=200))
    run = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

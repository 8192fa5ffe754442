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
from gatewatch.dashboards.promql import BALANCER, CLIENT_COUNT, PROBE_FAIL, PROBE_PASS, ratio, sel, sum_rate
from gatewatch.dashboards.promql import FAILOVERS as FAILOVERS_TOTAL
from gatewatch.telemetry.names import FailoverKind, Label
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
PRIORITY_MOVES = 'gatewatch_failovers_total{gatewatch_pool="shop",reason="failover.priority_degraded"}'
SERVED = 'gatewatch_pool_requests_total{gatewatch_pool="shop",failover="%s"}'
SERVED_NORMALLY, SERVED_BY_RETRY, SERVED_BY_PRIORITY, SERVED_IN_PANIC = (
    SERVED % k.value for k in (FailoverKind.NONE, FailoverKind.RETRY, FailoverKind.PRIORITY, FailoverKind.PANIC))
EJECTIONS = 'gatewatch_ejections_total{gatewatch_pool="shop",gatewatch_instance="a",reason="outlier.consecutive_5xx"}'
PROBES = 'gatewatch_health_probes_total{gatewatch_pool="shop",gatewatch_instance="a",result="%s"}'
PROBES_PASSED, PROBES_FAILED = PROBES % PROBE_PASS, PROBES % PROBE_FAIL
HEALTHY = 'gatewatch_endpoints{gatewatch_pool="shop",state="healthy"}'
UNHEALTHY = 'gatewatch_endpoints{gatewatch_pool="shop",state="unhealthy"}'
SLOW_START = 'gatewatch_endpoints{gatewatch_pool="shop",state="slow_start"}'
PANIC = 'gatewatch_pool_panic_mode{gatewatch_pool="shop"}'
EDGE = 'http_server_request_duration_seconds_%s{gatewatch_layer="edge",gatewatch_route="%s",' \
       'http_response_status_code="%s"%s}'
EDGE_OK = EDGE % ("count", "orders", "200", "")
EDGE_5XX = EDGE % ("count", "orders", "502", "")
EDGE_FAST = EDGE % ("bucket", "orders", "200", ',le="0.5"')
CATALOG_OK = EDGE % ("count", "catalog", "200", "")
CATALOG_FAST = EDGE % ("bucket", "catalog", "200", ',le="0.5"')
RARE_OK = EDGE % ("count", "rare", "200", "")
RARE_5XX = EDGE % ("count", "rare", "502", "")
RARE_FAST = EDGE % ("bucket", "rare", "200", ',le="0.5"')
EXHAUSTED = 'gatewatch_retry_budget_exhausted_total{gatewatch_route="orders",gatewatch_upstream="shop"}'
CERT_EXPIRY = ('gatewatch_tls_certificate_expiry_timestamp_seconds{gatewatch_listener="public",'
               'certificate="api.example.com",serial="%s",instance="edge-1:9901"}')
IDP = "https://idp.example.com"
PROVIDER_UP = f'gatewatch_auth_provider_up{{provider="{IDP}",endpoint="jwks",instance="edge-1:9901"}}'
STORE_URL = "redis://redis:6379/0"
STORE_UP = f'gatewatch_ratelimit_store_up{{store="{STORE_URL}",instance="edge-1:9901"}}'
STORE_UP_2 = f'gatewatch_ratelimit_store_up{{store="{STORE_URL}",instance="edge-2:9901"}}'
EXPORTED = 'gatewatch_telemetry_exported_total{signal="traces"}'
DROPPED = 'gatewatch_telemetry_dropped_total{signal="traces",reason="queue_full"}'
ENDPOINTS = 'gatewatch_endpoints{gatewatch_pool="shop",state="healthy"}'
COMPARED = 'gatewatch_mirror_comparisons_total{gatewatch_route="checkout",gatewatch_upstream="checkout-next",match="%s"}'
SHADOW_SAME, SHADOW_ERROR, SHADOW_DIFFERS = (COMPARED % m for m in ("same_status_class", "shadow_error", "differs"))
CHECKOUT_OK = EDGE % ("count", "checkout", "200", "")
CHECKOUT_5XX = EDGE % ("count", "checkout", "502", "")
CACHE = 'gatewatch_cache_requests_total{gatewatch_route="assets",result="%s",reason="%s"}'
CACHE_HIT, CACHE_MISS, CACHE_STALE = CACHE % ("hit", "fresh"), CACHE % ("miss", "expired"), \
    CACHE % ("stale", "stale_while_revalidate")

H2_GOAWAY = 'gatewatch_http2_events_total{gatewatch_listener="public",event="goaway",reason="%s"}'
RAPID_RESET_GOAWAY, DRAIN_GOAWAY = H2_GOAWAY % "rapid_reset", H2_GOAWAY % "drain"
DRAIN_STEP = 'gatewatch_drain_steps_total{step="%s",instance="edge-1:9901"}'
DRAIN_STARTED, DRAINED, GRACE_EXPIRED = (DRAIN_STEP % s for s in ("started", "drained", "grace_expired"))
DRAIN_CLOSED = 'gatewatch_drain_connections_closed_total{gatewatch_listener="public",reason="%s",instance="edge-1:9901"}'
CLOSED_AFTER_RESPONSE, CLOSED_AT_DEADLINE = DRAIN_CLOSED % "after_response", DRAIN_CLOSED % "deadline"
REFRESHES = 'gatewatch_discovery_refreshes_total{gatewatch_pool="shop",source="dns",result="%s"}'
REFRESH_OK, REFRESH_SERVFAIL = REFRESHES % "ok", REFRESHES % "servfail"
ADMIN_FAILURES = 'gatewatch_admin_auth_failures_total{reason="%s",instance="edge-1:9901"}'
ADMIN_INVALID, ADMIN_MISSING = ADMIN_FAILURES % "invalid", ADMIN_FAILURES % "missing"
EDGE_1 = {"instance": "edge-1:9901"}

POOL = {"gatewatch_pool": "shop"}
SHADOW = {"gatewatch_route": "checkout", "gatewatch_upstream": "checkout-next"}
ASSETS = {"gatewatch_route": "assets"}
ORDERS = {"gatewatch_route": "orders"}

# The incident the failover rule is shaped on (15 s scrapes): a pool at 10 req/s whose primary priority level
# fails at minute 5; from then on 61 % of its requests are served from the failover level. It moved once (one
# priority change) and ten requests were retried on another instance before the health check took it out.
INCIDENT = {
    SERVED_NORMALLY: "0+150x20 3058.5+58.5x79", SERVED_BY_PRIORITY: "0x20 91.5+91.5x79",
    SERVED_BY_RETRY: "0x20 10x79", SERVED_IN_PANIC: "0x100",
}
# What the rule measured before: failover *moves* per balancer attempt (gatewatch_failovers_total over the
# attempts to the pool's instances). In the incident above it peaks at 0.39 % (11 moves in ~2850 attempts).
OLD_FAILOVER_SHARE = ratio(
    sum_rate(FAILOVERS_TOTAL, Label.POOL, window="5m"),
    f'sum by ({Label.POOL}) (label_replace(rate({sel(CLIENT_COUNT, BALANCER)}[5m]), "{Label.POOL}", "$1", '
    f'"{Label.UPSTREAM}", "(.*)"))')


@dataclass
class Case:
    alert: str
    name: str
    series: dict[str, str]
    eval_at: list[str]
    fires: dict | None = None  # expected labels (besides severity/service) at the last eval time, None = silent
    interval: str = "1m"
    expr_tests: list[dict] = field(default_factory=list)  # promql_expr_test entries evaluated on the same series


CASES = [
    Case("GatewatchFailoverSpike", "the incident: 61 % of requests served from the failover priority level",
         INCIDENT, ["6m", "12m"], POOL, interval="15s"),
    Case("GatewatchFailoverSpike", "few moves, most requests on the failover level: the old rule (moves per "
         "attempt, 0.39 % at most) never went pending, this one fires",
         {**INCIDENT, ATTEMPTS: "0+150x100", PRIORITY_MOVES: "0x20 1x79", FAILOVERS: "0x20 10x79"}, ["12m"], POOL,
         interval="15s", expr_tests=[
             {"expr": f"max_over_time(({OLD_FAILOVER_SHARE})[20m:15s]) < bool 0.004", "eval_time": "20m",
              "exp_samples": [{"labels": '{gatewatch_pool="shop"}', "value": 1}]},
             {"expr": f"({OLD_FAILOVER_SHARE}) > 0.05", "eval_time": "7m", "exp_samples": []}]),
    Case("GatewatchFailoverSpike", "10 % of requests retried on another instance for minutes",
         {SERVED_NORMALLY: "0+540x20", SERVED_BY_RETRY: "0+60x20"}, ["5m"], POOL),
    Case("GatewatchFailoverSpike", "2 % of requests served while failing over stays below 5 %",
         {SERVED_NORMALLY: "0+588x20", SERVED_BY_RETRY: "0+12x20", SERVED_BY_PRIORITY: "0x20"}, ["10m"]),
    Case("GatewatchFailoverSpike", "one flap: every request on the failover level for 10 s (one health-check rise)",
         {SERVED_NORMALLY: "0+50x40 2000x2 2050+50x80", SERVED_BY_PRIORITY: "0x40 50 100x81"},
         ["3m30s", "4m", "5m", "8m", "10m"], interval="5s"),
    Case("GatewatchFailoverSpike", "a quiet pool (0.1 req/s) with half its requests failing over",
         {SERVED_NORMALLY: "0+3x20", SERVED_BY_RETRY: "0+3x20"}, ["10m"]),
    Case("GatewatchEjectionsHigh", "an ejection every minute",
         {EJECTIONS: "0+1x30"}, ["10m"], POOL),
    Case("GatewatchEjectionsHigh", "one flap: a single ejection",
         {EJECTIONS: "0x3 1x27"}, ["5m", "10m"]),
    Case("GatewatchEjectionsHigh", "two ejections in 15 minutes",
         {EJECTIONS: "0x3 1x3 2x24"}, ["10m"]),
    Case("GatewatchEjectedWhileProbesPass", "ejected twice by real traffic while every probe passes",
         {EJECTIONS: "0x3 1x5 2x22", PROBES_PASSED: "0+12x30", PROBES_FAILED: "0x30"}, ["6m", "12m"],
         {**POOL, "gatewatch_instance": "a"}),
    Case("GatewatchEjectedWhileProbesPass", "ejected, and the health check sees it fail too",
         {EJECTIONS: "0x3 1x26", PROBES_PASSED: "0+12x3 36x26", PROBES_FAILED: "0x3 12+12x26"}, ["8m", "12m"]),
    Case("GatewatchEjectedWhileProbesPass", "probes pass and nothing is ejected",
         {EJECTIONS: "0x30", PROBES_PASSED: "0+12x30", PROBES_FAILED: "0x30"}, ["12m"]),
    Case("GatewatchEjectedWhileProbesPass", "the health check catches up 3 minutes after the ejection",
         {EJECTIONS: "0x3 1x26", PROBES_PASSED: "0+12x30", PROBES_FAILED: "0x6 1x23"}, ["5m", "9m", "12m"]),
    Case("GatewatchEjectedWhileProbesPass", "one flap: the instance went down and came back (ejected, one probe "
         "failed)", {EJECTIONS: "0x3 1x26", PROBES_PASSED: "0+12x30", PROBES_FAILED: "0x3 1x26"},
         ["5m", "9m", "13m"]),
    Case("GatewatchEjectedWhileProbesPass", "no active health check (no probe series)",
         {EJECTIONS: "0x3 1x26"}, ["9m"]),
    Case("GatewatchPoolNoHealthyInstance", "every instance unhealthy",
         {HEALTHY: "3 3 0x10", UNHEALTHY: "0 0 3x10", SLOW_START: "0x12"}, ["5m"], POOL),
    Case("GatewatchPoolNoHealthyInstance", "one healthy instance left, still in slow start",
         {HEALTHY: "1x10", SLOW_START: "1x10", UNHEALTHY: "2x10"}, ["5m"]),
    Case("GatewatchPoolNoHealthyInstance", "one flap: all down for a single evaluation",
         {HEALTHY: "3 0 3x10", UNHEALTHY: "0 3 0x10"}, ["2m", "5m"]),
    Case("GatewatchPoolDegraded", "a third of the pool healthy",
         {HEALTHY: "1x20", UNHEALTHY: "2x20", SLOW_START: "0x20"}, ["10m"], POOL),
    Case("GatewatchPoolDegraded", "a third healthy, that one in slow start (counted as healthy and slow_start)",
         {HEALTHY: "1x20", SLOW_START: "1x20", UNHEALTHY: "2x20"}, ["10m"], POOL),
    Case("GatewatchPoolDegraded", "two thirds healthy",
         {HEALTHY: "2x20", UNHEALTHY: "1x20"}, ["10m"]),
    Case("GatewatchPoolDegraded", "one flap: degraded for three minutes",
         {HEALTHY: "1x3 3x17", UNHEALTHY: "2x3 0x17"}, ["3m", "10m"]),
    Case("GatewatchPoolPanicMode", "panic mode for minutes", {PANIC: "1x10"}, ["5m"], POOL),
    Case("GatewatchPoolPanicMode", "never in panic", {PANIC: "0x10"}, ["5m"]),
    Case("GatewatchPoolPanicMode", "one flap: one minute of panic", {PANIC: "0 1 0x10"}, ["2m", "5m"]),
    Case("GatewatchErrorBudgetBurnFast", "2 % 5xx (budget 0.1 %, fast limit 1.44 %)",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0+12x120"}, ["10m"], ORDERS),
    Case("GatewatchErrorBudgetBurnFast", "one bad route among busy healthy ones pages for that route (1.8 % of "
         "orders, 0.16 % of all requests)",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0+11x120", CATALOG_OK: "0+6000x120"}, ["10m"], ORDERS),
    Case("GatewatchErrorBudgetBurnFast", "0.5 % 5xx", {EDGE_OK: "0+600x120", EDGE_5XX: "0+3x120"}, ["30m"]),
    Case("GatewatchErrorBudgetBurnFast", "a quiet route: 2 requests in 5 minutes, one of them a 5xx",
         {EDGE_OK: "0+600x120", RARE_OK: "0x50 1x70", RARE_5XX: "0x52 1x68"}, ["53m", "55m", "57m"]),
    Case("GatewatchErrorBudgetBurnFast", "one flap: one minute at 5 % 5xx after an hour of none",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0x60 30x60"}, ["61m", "63m", "70m"]),
    Case("GatewatchErrorBudgetBurnSlow", "1 % 5xx for an hour (slow limit 0.6 %)",
         {EDGE_OK: "0+600x120", EDGE_5XX: "0+6x120"}, ["60m"], ORDERS),
    Case("GatewatchErrorBudgetBurnSlow", "0.5 % 5xx", {EDGE_OK: "0+600x120", EDGE_5XX: "0+3x120"}, ["60m"]),
    Case("GatewatchErrorBudgetBurnSlow", "a quiet route: 2 requests a minute, half of them 5xx",
         {RARE_OK: "0+1x120", RARE_5XX: "0+1x120"}, ["60m", "100m"]),
    Case("GatewatchLatencyBudgetBurnFast", "20 % slower than 0.5 s (budget 1 %, fast limit 14.4 %)",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+480x120"}, ["10m"], ORDERS),
    Case("GatewatchLatencyBudgetBurnFast", "10 % slow: a slow burn, not a fast one",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+540x120"}, ["30m"]),
    Case("GatewatchLatencyBudgetBurnFast", "a quiet route: 2 slow requests in 5 minutes",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+600x120", RARE_OK: "0x50 2x70", RARE_FAST: "0x120"},
         ["53m", "55m"]),
    Case("GatewatchLatencyBudgetBurnFast", "one flap: one minute all slow after an hour of none",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+600x60 36000+600x59"}, ["61m", "63m", "70m"]),
    Case("GatewatchLatencyBudgetBurnSlow", "10 % slow for an hour (slow limit 6 %)",
         {EDGE_OK: "0+600x120", EDGE_FAST: "0+540x120"}, ["60m"], ORDERS),
    Case("GatewatchLatencyBudgetBurnSlow", "0.5 % slow", {EDGE_OK: "0+600x120", EDGE_FAST: "0+597x120"}, ["60m"]),
    Case("GatewatchRetryBudgetExhausted", "6 refused retries a minute",
         {EXHAUSTED: "0+6x20"}, ["10m"], {"gatewatch_route": "orders", "gatewatch_upstream": "shop"}),
    Case("GatewatchRetryBudgetExhausted", "one refused retry a minute", {EXHAUSTED: "0+1x20"}, ["10m"]),
    Case("GatewatchRetryBudgetExhausted", "one flap: a burst of 10 refusals", {EXHAUSTED: "0x5 10x15"}, ["8m", "12m"]),
    Case("GatewatchRateLimitStoreUnavailable", "the store down for minutes",
         {STORE_UP: "1x4 0x40"}, ["8m"], {"store": STORE_URL}, interval="15s"),
    Case("GatewatchRateLimitStoreUnavailable", "one of two processes cannot reach the store",
         {STORE_UP: "1x40", STORE_UP_2: "1x4 0x36"}, ["8m"], {"store": STORE_URL}, interval="15s"),
    Case("GatewatchRateLimitStoreUnavailable", "the store answers", {STORE_UP: "1x40"}, ["8m"], interval="15s"),
    Case("GatewatchRateLimitStoreUnavailable", "one flap: down for 75 s",
         {STORE_UP: "1x8 0x4 1x27"}, ["3m", "4m", "8m"], interval="15s"),
    Case("GatewatchRateLimitStoreUnavailable", "one flap: down for 2.5 minutes, shorter than `for`",
         {STORE_UP: "1x8 0x9 1x22"}, ["3m", "4m30s", "5m", "8m"], interval="15s"),
    Case("GatewatchAuthProviderDown", "the JWKS endpoint down for minutes", {PROVIDER_UP: "1x4 0x40"}, ["8m"],
         {"provider": IDP, "endpoint": "jwks"}, interval="15s"),
    Case("GatewatchAuthProviderDown", "the provider answers", {PROVIDER_UP: "1x40"}, ["8m"], interval="15s"),
    Case("GatewatchAuthProviderDown", "one flap: down for 2.5 minutes, shorter than `for`",
         {PROVIDER_UP: "1x8 0x9 1x22"}, ["3m", "4m30s", "5m", "8m"], interval="15s"),
    Case("GatewatchTelemetryDropping", "9 % of spans dropped", {EXPORTED: "0+600x40", DROPPED: "0+60x40"},
         ["25m"], {"signal": "traces"}),
    Case("GatewatchTelemetryDropping", "0.5 % dropped", {EXPORTED: "0+600x40", DROPPED: "0+3x40"}, ["25m"]),
    Case("GatewatchTelemetryDropping", "nothing dropped", {EXPORTED: "0+600x40", DROPPED: "0x40"}, ["25m"]),
    Case("GatewatchTelemetryDropping", "one flap: 300 drops at once", {EXPORTED: "0+600x40", DROPPED: "0x10 300x30"},
         ["15m", "21m", "25m"]),
    # promtool's clock starts at 0: a notAfter of 1,210,000 s is 13.99 days away at 20 minutes
    Case("GatewatchTLSCertificateExpiringSoon", "13.99 days left", {CERT_EXPIRY % "a1": "1210000x30"}, ["20m"],
         {"gatewatch_listener": "public", "certificate": "api.example.com", "serial": "a1"}),
    Case("GatewatchTLSCertificateExpiringSoon", "15 days left", {CERT_EXPIRY % "a1": "1300000x30"}, ["20m"]),
    Case("GatewatchTLSCertificateExpiringSoon", "one flap: rotated (the old series goes, a new one with 90 days)",
         {CERT_EXPIRY % "a1": "1210000x2 stale", CERT_EXPIRY % "b2": "_x3 7776000x30"}, ["5m", "20m"]),
    # Mirroring: the shadow's divergence (error, timeout, other status class) against the primary's own 5xx share
    Case("GatewatchMirrorDivergence", "the shadow fails 10 % of mirrored requests, the primary none",
         {CHECKOUT_OK: "0+600x40", SHADOW_SAME: "0+540x40", SHADOW_ERROR: "0+60x40"}, ["10m", "30m"], SHADOW),
    Case("GatewatchMirrorDivergence", "8 % of shadow answers differ in status class from a healthy primary's",
         {CHECKOUT_OK: "0+600x40", SHADOW_SAME: "0+552x40", SHADOW_DIFFERS: "0+48x40"}, ["30m"], SHADOW),
    Case("GatewatchMirrorDivergence", "the primary fails as often as the shadow (10 % each): nothing new",
         {CHECKOUT_OK: "0+540x40", CHECKOUT_5XX: "0+60x40", SHADOW_SAME: "0+540x40", SHADOW_ERROR: "0+60x40"},
         ["30m"]),
    Case("GatewatchMirrorDivergence", "3 % divergence stays under the 5-point margin",
         {CHECKOUT_OK: "0+600x40", SHADOW_SAME: "0+582x40", SHADOW_DIFFERS: "0+18x40"}, ["30m"]),
    Case("GatewatchMirrorDivergence", "a quiet mirror: 6 comparisons a minute, half of them errors",
         {CHECKOUT_OK: "0+6x40", SHADOW_SAME: "0+3x40", SHADOW_ERROR: "0+3x40"}, ["30m"]),
    Case("GatewatchMirrorDivergence", "one flap: the shadow fails every request for 3 minutes (a restart)",
         {CHECKOUT_OK: "0+600x40", SHADOW_SAME: "0+600x10 6000x3 6000+600x27", SHADOW_ERROR: "0x10 600+600x2 1800x27"},
         ["15m", "20m", "25m", "30m"]),
    Case("GatewatchHTTP2RapidReset", "one connection ended for rapid reset",
         {RAPID_RESET_GOAWAY: "0x5 1x10", DRAIN_GOAWAY: "0x15"}, ["7m"], {"gatewatch_listener": "public"}),
    Case("GatewatchHTTP2RapidReset", "GOAWAYs of drains only", {RAPID_RESET_GOAWAY: "0x15", DRAIN_GOAWAY: "0x5 30x10"},
         ["7m"]),
    Case("GatewatchHTTP2RapidReset", "one rapid reset leaves the 5-minute window",
         {RAPID_RESET_GOAWAY: "0x5 1x20"}, ["13m"]),  # the first case fires on the same series at 7m
    Case("GatewatchDrainGraceExpired", "the grace ran out; the process exited right after",
         {DRAIN_STARTED: "0x5 1 stale", GRACE_EXPIRED: "0x5 1 stale", CLOSED_AT_DEADLINE: "0x5 4 stale"}, ["8m"],
         EDGE_1),
    Case("GatewatchDrainGraceExpired", "connections cut at the deadline (a listener's count only)",
         {GRACE_EXPIRED: "0x5 0 stale", CLOSED_AT_DEADLINE: "0x5 2 stale"}, ["8m"], EDGE_1),
    Case("GatewatchDrainGraceExpired", "a clean drain: every connection ended after its response",
         {DRAIN_STARTED: "0x5 1 stale", DRAINED: "0x5 1 stale", GRACE_EXPIRED: "0x6 stale",
          CLOSED_AFTER_RESPONSE: "0x5 12 stale", CLOSED_AT_DEADLINE: "0x6 stale"}, ["8m"]),
    Case("GatewatchDrainGraceExpired", "a cut drain 20 minutes ago is over",
         {GRACE_EXPIRED: "0x5 1 stale"}, ["25m"]),
    Case("GatewatchDiscoveryFailing", "DNS answers SERVFAIL for 15 minutes",
         {REFRESH_OK: "0+1x5 6x30", REFRESH_SERVFAIL: "0x5 1+1x30"}, ["20m"], {**POOL, "source": "dns"}),
    Case("GatewatchDiscoveryFailing", "one failed refresh, the retry works",
         {REFRESH_OK: "0+1x30", REFRESH_SERVFAIL: "0x5 1x25"}, ["8m", "14m"]),
    Case("GatewatchDiscoveryFailing", "failing for 3 minutes: a success is still in the window",
         {REFRESH_OK: "0+1x5 6x30", REFRESH_SERVFAIL: "0x5 1+1x30"}, ["8m"]),
    Case("GatewatchDiscoveryFailing", "refreshes succeed", {REFRESH_OK: "0+1x30", REFRESH_SERVFAIL: "0x30"}, ["20m"]),
    Case("GatewatchAdminAuthFailures", "10 invalid tokens a minute",
         {ADMIN_INVALID: "0x5 0+10x10", ADMIN_MISSING: "0x15"}, ["10m"], EDGE_1),
    Case("GatewatchAdminAuthFailures", "a person mistyping the token three times", {ADMIN_INVALID: "0x5 3x10"},
         ["10m"]),
    Case("GatewatchAdminAuthFailures", "requests without a token (a browser, a probe) are not invalid tokens",
         {ADMIN_INVALID: "0x15", ADMIN_MISSING: "0+20x15"}, ["10m"]),
    Case("GatewatchBalancerSilent", "the balancer's series go stale", {ENDPOINTS: "3 3 3 stale"}, ["10m"], {}),
    Case("GatewatchBalancerSilent", "the balancer reports", {ENDPOINTS: "3x20"}, ["10m"]),
    Case("GatewatchBalancerSilent", "one flap: one failed scrape", {ENDPOINTS: "3 3 stale 3x20"}, ["3m", "10m"]),
]


# Rules that compare with a day earlier (`offset 1d`) need a day and a bit of series: sampled and evaluated every
# 10 minutes (promtool evaluates every rule at every step; at 1-minute steps these cases alone took 100 s).
DAY_INTERVAL = "10m"
DAY_CASES = [
    Case("GatewatchCacheHitRatioCollapsed", "90 % hits for a day, then 10 % (the upstream started sending no-store)",
         {CACHE_HIT: "0+5400x150 810600+600x10", CACHE_MISS: "0+600x150 90600+5400x10"}, ["1510m", "1600m"],
         ASSETS),
    Case("GatewatchCacheHitRatioCollapsed", "stale answers count as hits: 90 % served from the cache all along",
         {CACHE_HIT: "0+3000x170", CACHE_STALE: "0+2400x170", CACHE_MISS: "0+600x170"}, ["1600m"]),
    Case("GatewatchCacheHitRatioCollapsed", "a steady 10 %: it never was a useful cache, nothing collapsed",
         {CACHE_HIT: "0+600x170", CACHE_MISS: "0+5400x170"}, ["1600m"]),
    Case("GatewatchCacheHitRatioCollapsed", "a new route: a low hit ratio and no history a day ago",
         {CACHE_HIT: "0+600x20", CACHE_MISS: "0+5400x20"}, ["150m"]),
    Case("GatewatchCacheHitRatioCollapsed", "a quiet route (6 requests a minute) that stopped hitting",
         {CACHE_HIT: "0+50x150 7500x10", CACHE_MISS: "0+10x150 1560+60x10"}, ["1600m"]),
    Case("GatewatchCacheHitRatioCollapsed", "one flap: a reload empties the cache, 10 minutes of misses, refilled",
         {CACHE_HIT: "0+5400x150 810000 810000+5400x9", CACHE_MISS: "0+600x150 96000 96000+600x9"},
         ["1520m", "1530m", "1560m", "1600m"]),
]
for _c in DAY_CASES:
    _c.interval = DAY_INTERVAL


def _expected(case: Case, at: str, severity: str) -> list[dict]:
    if case.fires is None or at != case.eval_at[-1]:
        return []
    return [{"exp_labels": {**case.fires, "severity": severity, "service": "gatewatch"}}]


def _test_file(rules_path: Path, cases: list[Case], evaluation_interval: str = "1m") -> dict:
    severity = {r["alert"]: r["labels"]["severity"] for r in SHIPPED["groups"][0]["rules"]}
    tests = []
    for c in cases:
        tests.append({
            "name": f"{c.alert}: {c.name}",
            "interval": c.interval,
            "input_series": [{"series": s, "values": v} for s, v in c.series.items()],
            "alert_rule_test": [{"eval_time": at, "alertname": c.alert, "exp_alerts": _expected(c, at, severity[c.alert])}
                                for at in c.eval_at],
            **({"promql_expr_test": c.expr_tests} if c.expr_tests else {}),
        })
    return {"rule_files": [str(rules_path)], "evaluation_interval": evaluation_interval, "tests": tests}


def test_every_alert_has_a_firing_and_a_silent_case():
    alerts = {r["alert"] for r in SHIPPED["groups"][0]["rules"]}
    firing = {c.alert for c in CASES + DAY_CASES if c.fires is not None}
    silent = {c.alert for c in CASES + DAY_CASES if c.fires is None}
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
    for name, cases, step in (("tests.yml", CASES, "1m"), ("day-tests.yml", DAY_CASES, DAY_INTERVAL)):
        tests = tmp_path / name
        tests.write_text(yaml.safe_dump(_test_file(rules, cases, step), sort_keys=False, width=200))
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

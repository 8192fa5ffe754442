"""Prometheus alert rules for Gatewatch, generated from the same names as the dashboards.

Primitives: `AlertRule` (one rule: expression, `for`, severity, summary, description, runbook, dashboard link,
and the `signals` — the sub-expressions the rule compares, which a test can check return data while the rule
itself is silent), `rules(opts)` (all of them) and `rule_file(opts)` (the Prometheus rule-file document).

Tuning — one flap must not page:
- ratios are over ≥ 5 m windows and need a minimum of traffic (per pool, per route), so a handful of failures on
  a quiet pool or route is not a spike;
- every rule has a `for:` longer than a health check's fall/rise cycle (a single instance flap is over before the
  rule could fire);
- the failover share is of *requests* over 5 m: a failover shorter than 5 % of the window (15 s with every request
  on the failover level; a health check's rise with the default 5 s × 2) cannot reach the threshold at all;
- a rule on a gauge (the rate-limit store) has a `for:` that one blip cannot reach;
- the SLO burn rules are the multi-window, multi-burn-rate pairs of the Google SRE workbook, per edge route: a long
  window that says the budget is really burning and a short one that says it still is (14.4× over 1 h and 5 m
  pages: 2 % of a 30-day budget in an hour; 6× over 6 h and 30 m opens a ticket: 5 % in six hours).
Severity: `page` wakes someone, `ticket` can wait for working hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from gatewatch.dashboards.options import BuildOptions
from gatewatch.dashboards.panels import UID
from gatewatch.dashboards.promql import (AUTH_PROVIDER_UP, EDGE, EJECTIONS, ENDPOINTS, PANIC_MODE, POLICY_VERDICTS,
                                         RATELIMIT_STORE_UP, RETRIES, RETRY_BUDGET_EXHAUSTED, SERVER_BUCKET,
                                         SERVER_COUNT, SERVER_ERROR, TELEMETRY_DROPPED, TELEMETRY_EXPORTED, TLS_CERT_EXPIRY,
                                         ejections_and_probes, failover_share, or_zero, pool_request_rate, ratio,
                                         sel, serving_and_instances, sum_, sum_rate)
from gatewatch.dashboards.traffic import cache_hit_ratio, cache_request_rate, mirror_compared, mirror_divergence
from gatewatch.dashboards.promql import (ADMIN_AUTH_FAILURES, DISCOVERY_REFRESHES, DRAIN_CLOSED, DRAIN_STEPS, HTTP2_EVENTS,
                                         increase)
from gatewatch.telemetry.names import (AdminAuthFailure, DiscoveryResult, DrainClose, DrainStep, H2Event, H2Reason,
                                       Label, PolicyReason)

PL, I, R = Label.POOL, Label.INSTANCE, Label.ROUTE
# Minimum requests/s a pool served (over 5 m) before its failover share can page: ~1 request every 5 s.
MIN_POOL_RPS = 0.2
# Minimum edge requests/s of a route over a burn rule's short window before its ratio counts: 60 requests in 5 m,
# 360 in 30 m. A route with 2 requests and 1 failure has a 50 % ratio and proves nothing.
MIN_ROUTE_RPS = 0.2
FAILOVER_SHARE = 0.05  # of a pool's requests served while failing over, over FAILOVER_WINDOW
FAILOVER_WINDOW = "5m"
EJECTION_WINDOW = "10m"  # ejections and active probes compared over this window
CERT_EXPIRY_DAYS = 14  # renewals (ACME's at 30 days left) are due long before; 14 leaves two weeks to act
STORE_DOWN_FOR = "3m"  # a store blip (down, then the next command succeeds) is over long before this
# Mirroring (issue 19): a shadow diverging from the primary (failed, timed out, other status class) this many
# points more often than the primary's own 5xx share, over MIRROR_WINDOW, with at least MIN_MIRROR_RPS comparisons.
MIRROR_DIVERGENCE_MARGIN = 0.05
MIRROR_WINDOW = "10m"
MIN_MIRROR_RPS = 0.2
# Caching (issue 19): a route's hit ratio below this fraction of the same hour yesterday, when yesterday's was
# worth having (CACHE_USEFUL_RATIO) and the route has traffic now (MIN_CACHE_RPS), over CACHE_WINDOW.
CACHE_COLLAPSE_FRACTION = 0.5
CACHE_USEFUL_RATIO = 0.2
CACHE_WINDOW = "30m"
MIN_CACHE_RPS = 0.2
# HTTP/2 rapid reset (CVE-2023-44487): any connection ended with GOAWAY ENHANCE_YOUR_CALM for too many resets.
RAPID_RESET_WINDOW = "5m"
# Drains: a drain that cut connections is seen for this long (the process exits right after; its last scrape
# before exiting carries the count, and the stored samples keep it in the window).
DRAIN_WINDOW = "15m"
# Discovery: no successful refresh of a pool, and failed ones, over this window.
DISCOVERY_WINDOW = "10m"
# Admin API: more than this many invalid bearer tokens per process over ADMIN_AUTH_WINDOW (one every 15 s: a
# script with a revoked token, or someone guessing; a person mistyping a token a few times stays below).
ADMIN_INVALID_TOKENS = 20
ADMIN_AUTH_WINDOW = "5m"


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str  # page | ticket
    summary: str
    description: str
    runbook: str
    dashboard: str  # key of dashboards.panels.UID
    dashboard_vars: dict[str, str] = field(default_factory=dict)  # var → Prometheus template of a label
    signals: tuple[str, ...] = ()  # what the rule measures (returns data even while the rule is silent)

    def document(self, grafana_url: str) -> dict:
        params = "".join(f"&var-{k}={v}" for k, v in self.dashboard_vars.items())
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "service": "gatewatch"},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook": self.runbook,
                "dashboard": f"{grafana_url}/d/{UID[self.dashboard]}?from=now-3h&to=now{params}",
            },
        }


def route_requests(window: str) -> str:
    """Edge requests/s per route."""
    return sum_rate(sel(SERVER_COUNT, EDGE), R, window=window)


def edge_error_ratio(window: str) -> str:
    """Per route: the share of edge requests answered with a 5xx. A route without a 5xx has no 5xx series yet
    (histogram series appear on their first observation), hence the zero fallback."""
    total = route_requests(window)
    return ratio(or_zero(sum_rate(sel(SERVER_COUNT, EDGE, SERVER_ERROR), R, window=window), total), total)


def edge_slow_ratio(window: str, threshold_s: float) -> str:
    """Per route: the share of edge requests slower than the threshold (every bucket of a series exists with it)."""
    fast = sum_rate(sel(SERVER_BUCKET, EDGE, le="~" + le_regex(threshold_s)), R, window=window)
    return f"1 - ({ratio(fast, route_requests(window))})"


def le_regex(bound: float) -> str:
    """The bucket's `le` as Prometheus 2 stores it from the exposition (`1.0`) and as Prometheus 3 normalises it
    (`1`): a rule must match both to work with either."""
    spellings = sorted({floatToGoString(bound), format(bound, "g")})
    return "|".join(v.replace(".", "\\\\.") for v in spellings)


def _burn(ratio_of, budget: float, factor: float, long: str, short: str) -> str:
    limit = f"({factor} * {budget})"
    return (f"({ratio_of(long)} > {limit}\nand\n{ratio_of(short)} > {limit}\n"
            f"and\n{route_requests(short)} > {MIN_ROUTE_RPS})")


def _burn_rules(kind: str, what: str, ratio_of, budget: float, target: str, dashboard: str) -> list[AlertRule]:
    out = []
    for speed, factor, long, short, for_, severity, share in (
            ("Fast", 14.4, "1h", "5m", "2m", "page", "2 % of a 30-day error budget in one hour"),
            ("Slow", 6, "6h", "30m", "15m", "ticket", "5 % of a 30-day error budget in six hours")):
        out.append(AlertRule(
            name=f"Gatewatch{kind}BudgetBurn{speed}",
            expr=_burn(ratio_of, budget, factor, long, short),
            for_=for_, severity=severity,
            summary=(f"Route {{{{ $labels.gatewatch_route }}}}: {what} budget burning {factor}× too fast "
                     f"({long} and {short} windows)"),
            description=(f"The share of {what} edge requests of route {{{{ $labels.gatewatch_route }}}} over the "
                         f"last {long} and the last {short} is above {factor}× the budget of the {target} SLO, "
                         f"with at least {MIN_ROUTE_RPS} requests/s over {short}: at this rate {share} is gone. "
                         f"Over {long}: {{{{ $value | humanizePercentage }}}}."),
            runbook=("Open the Overview with the route selected (5xx ratio / p99, where the time goes), then its "
                     "Request journey: is it one instance (balancer layer) or the edge itself (its own time, "
                     "policies)? Exemplars and the slow/failed traces table lead to example traces."),
            dashboard=dashboard, dashboard_vars={"route": "{{ $labels.gatewatch_route }}"},
            signals=(ratio_of(long), ratio_of(short), route_requests(short))))
    return out


def rules(opts: BuildOptions) -> list[AlertRule]:
    slo = opts.slo
    share = failover_share(window=FAILOVER_WINDOW)
    served = pool_request_rate(window=FAILOVER_WINDOW)
    ejected, probes_passed, probes_failed = ejections_and_probes(EJECTION_WINDOW)
    serving, instances = serving_and_instances()
    healthy_share = ratio(serving, instances)
    ejections = sum_(f"increase({EJECTIONS}[15m])", PL)
    exhausted = sum_rate(sel(RETRY_BUDGET_EXHAUSTED), Label.ROUTE, Label.UPSTREAM, window="5m")
    store_up = f"min by ({Label.STORE}) ({RATELIMIT_STORE_UP})"
    provider_up = f"min by ({Label.PROVIDER}, {Label.ENDPOINT}) ({AUTH_PROVIDER_UP})"
    ratelimit_verdicts = sum_rate(sel(POLICY_VERDICTS, reason="~ratelimit\\\\..*"), Label.ROUTE, Label.POLICY,
                                  Label.VERDICT, Label.REASON, window="5m")
    store_errors = sum_rate(sel(POLICY_VERDICTS, reason=PolicyReason.RATELIMIT_STORE_UNAVAILABLE.value),
                            Label.ROUTE, Label.POLICY, window="5m")
    exported = sum_rate(sel(TELEMETRY_EXPORTED), Label.SIGNAL, window="10m")
    dropped = sum_rate(sel(TELEMETRY_DROPPED), Label.SIGNAL, window="10m")  # every signal × reason exists from 0
    drop_share = ratio(dropped, f"{exported} + {dropped}")
    pool_var = {"pool": f"{{{{ $labels.{PL} }}}}"}
    diverged, primary_5xx = mirror_divergence(window=MIRROR_WINDOW)
    compared = mirror_compared(window=MIRROR_WINDOW)
    hit_ratio = cache_hit_ratio(window=CACHE_WINDOW)
    hit_ratio_yesterday = cache_hit_ratio(window=CACHE_WINDOW, offset="1d")
    cache_rps = cache_request_rate(window=CACHE_WINDOW)
    rapid_resets = sum_(increase(sel(HTTP2_EVENTS, event=H2Event.GOAWAY.value, reason=H2Reason.RAPID_RESET.value),
                                 RAPID_RESET_WINDOW), Label.LISTENER)
    grace_expired = sum_(increase(sel(DRAIN_STEPS, step=DrainStep.GRACE_EXPIRED.value), DRAIN_WINDOW), "instance")
    cut = sum_(increase(sel(DRAIN_CLOSED, reason=DrainClose.DEADLINE.value), DRAIN_WINDOW), "instance")
    discovery_failed = sum_(increase(sel(DISCOVERY_REFRESHES, result="!" + DiscoveryResult.OK.value),
                                     DISCOVERY_WINDOW), PL, Label.SOURCE)
    discovery_ok = sum_(increase(sel(DISCOVERY_REFRESHES, result=DiscoveryResult.OK.value), DISCOVERY_WINDOW),
                        PL, Label.SOURCE)
    admin_invalid = sum_(increase(sel(ADMIN_AUTH_FAILURES, reason=AdminAuthFailure.INVALID.value),
                                  ADMIN_AUTH_WINDOW), "instance")
    cert_days_left = (f"min by ({Label.LISTENER}, {Label.CERTIFICATE}, {Label.SERIAL}) "
                      f"({TLS_CERT_EXPIRY} - time()) / 86400")
    out = [
        AlertRule(
            "GatewatchFailoverSpike",
            f"{share} > {FAILOVER_SHARE}\nand\n{served} > {MIN_POOL_RPS}", "2m", "page",
            "Pool {{ $labels.gatewatch_pool }}: {{ $value | humanizePercentage }} of requests served while "
            "failing over",
            f"More than {FAILOVER_SHARE:.0%} of the requests pool {{{{ $labels.gatewatch_pool }}}} served over "
            f"{FAILOVER_WINDOW} were served while it was failing over — by a retry sent to another instance, from "
            "a failover priority level, or in panic mode — for 2 minutes. Instances are failing while the pool "
            "still answers: its spare capacity is in use.",
            "Balancer & health: the share by kind (retry / priority / panic), which instances are unhealthy or "
            "ejected, and the state-change events (each failover episode has one event id; its rows link to the "
            "requests it affected). If one instance keeps failing, drain it; if a whole priority level is down, "
            "check that zone.",
            "balancer", pool_var, signals=(share, served)),
        AlertRule(
            "GatewatchEjectionsHigh", f"{ejections} > 3", "2m", "ticket",
            "Pool {{ $labels.gatewatch_pool }}: {{ $value }} outlier ejections in 15 minutes",
            "Outlier detection ejected instances of pool {{ $labels.gatewatch_pool }} more than 3 times in 15 "
            "minutes: instances are failing repeatedly (a single ejection of a flapping instance does not fire).",
            "Balancer & health: ejections by instance and reason; the ejection events in the logs list the "
            "failing requests' trace ids. Repeated ejections of one instance: take it out (drain) and look at "
            "it; of many: the backend as a whole is sick.",
            "balancer", pool_var, signals=(ejections,)),
        AlertRule(
            "GatewatchEjectedWhileProbesPass",
            f"{ejected} > 0\nand on ({PL}, {I})\n{probes_passed} > 0\nand on ({PL}, {I})\n{probes_failed} == 0",
            "5m", "ticket",
            "{{ $labels.gatewatch_instance }} of pool {{ $labels.gatewatch_pool }} ejected while its health "
            "check passes",
            f"Outlier detection ejected {{{{ $labels.gatewatch_instance }}}} of pool "
            f"{{{{ $labels.gatewatch_pool }}}} ({{{{ $value }}}} times in {EJECTION_WINDOW}) because real requests "
            "failed, while every active health probe of it in that window passed: the health check does not see "
            "what real traffic sees. It will keep returning the instance to the pool, and real requests will "
            "keep failing on it.",
            "Balancer & health: the instance's requests by outcome and its ejection events (with the trace ids of "
            "the failing requests), next to its probes. Make the health check exercise what requests use (a "
            "deeper path, the same port and Host), or fix the instance.",
            "balancer", {**pool_var, "instance": f"{{{{ $labels.{I} }}}}"},
            signals=(ejected, probes_passed, probes_failed)),
        AlertRule(
            "GatewatchPoolNoHealthyInstance", f"{serving} == 0\nand\n{instances} > 0",
            "1m", "page",
            "Pool {{ $labels.gatewatch_pool }} has no healthy instance",
            "Every instance of pool {{ $labels.gatewatch_pool }} is unhealthy, ejected or draining: its "
            "requests fail with no_healthy_upstream (503) unless panic mode spreads them over all instances.",
            "Balancer & health: instance states and health probe results. Check the backends themselves; if "
            "they are fine, check the health check's path/port and the network between balancer and instances.",
            "balancer", pool_var, signals=(serving, instances)),
        AlertRule(
            "GatewatchPoolDegraded", f"{healthy_share} < 0.5", "5m", "ticket",
            "Pool {{ $labels.gatewatch_pool }}: only {{ $value | humanizePercentage }} of instances healthy",
            "Fewer than half the instances of pool {{ $labels.gatewatch_pool }} have taken traffic for 5 "
            "minutes; the survivors carry the load.",
            "Balancer & health: which instances are out and why (unhealthy / ejected / draining). Restore "
            "capacity before the survivors saturate (in-flight per instance).",
            "balancer", pool_var, signals=(healthy_share,)),
        AlertRule(
            "GatewatchPoolPanicMode", f"max by ({PL}) ({PANIC_MODE}) > 0", "2m", "page",
            "Pool {{ $labels.gatewatch_pool }} is in panic mode",
            "Too few instances of pool {{ $labels.gatewatch_pool }} are healthy, so the balancer spreads "
            "requests over all instances, healthy or not: some requests go to broken instances.",
            "Balancer & health: healthy share and instance states. Restore instances; panic mode ends by itself "
            "when the healthy share is back above the panic threshold.",
            "balancer", pool_var, signals=(f"max by ({PL}) ({PANIC_MODE})",)),
        *_burn_rules("Error", "5xx", edge_error_ratio, slo.error_budget,
                     f"{slo.availability_percent} % availability", "overview"),
        *_burn_rules("Latency", f"slower than {floatToGoString(slo.latency_threshold_s)} s",
                     lambda w: edge_slow_ratio(w, slo.latency_threshold_s), slo.latency_budget,
                     f"{slo.latency_percent} % under {floatToGoString(slo.latency_threshold_s)} s latency",
                     "overview"),
        AlertRule(
            "GatewatchRetryBudgetExhausted", f"{exhausted} > 0.05", "5m", "ticket",
            "Retry budget exhausted: {{ $labels.gatewatch_route }} → {{ $labels.gatewatch_upstream }}",
            "Retries of route {{ $labels.gatewatch_route }} to {{ $labels.gatewatch_upstream }} have been "
            "refused by the retry budget for 5 minutes (more than one refusal every 20 s): failures reach "
            "clients that a retry would have hidden, because too many requests are failing at once.",
            "Balancer & health: retries by reason and retry budget use; the upstream is failing broadly. The "
            "budget is working as intended (no retry storm) — fix the upstream, do not raise the budget.",
            "balancer", {"pool": "{{ $labels.gatewatch_upstream }}"}, signals=(sum_rate(
                sel(RETRIES), Label.ROUTE, Label.UPSTREAM, window="5m"), exhausted)),
        AlertRule(
            "GatewatchRateLimitStoreUnavailable", f"{store_up} == 0", STORE_DOWN_FOR, "page",
            "Rate-limit store {{ $labels.store }} is unreachable",
            f"The rate-limit store {{{{ $labels.store }}}} (Redis) has not answered a Gatewatch process for "
            f"{STORE_DOWN_FOR}: every rate-limit policy using it applies its fail mode — fail-open lets every "
            "request through unlimited, fail-closed refuses them (429).",
            "Decisions: the store's up/down timeline and its transition events (the outage has one event id; its "
            "rows link to the requests it affected), and the policy verdicts with reason "
            "ratelimit.store_unavailable. Check Redis (reachable from every Gatewatch replica, not out of "
            "memory, latency under the policy's timeout).",
            "decisions", signals=(store_up, ratelimit_verdicts, store_errors)),
        AlertRule(
            "GatewatchAuthProviderDown", f"{provider_up} == 0", STORE_DOWN_FOR, "page",
            "Identity provider {{ $labels.provider }} ({{ $labels.endpoint }}) is unreachable",
            f"The {{{{ $labels.endpoint }}}} endpoint of identity provider {{{{ $labels.provider }}}} has not "
            f"answered a Gatewatch process for {STORE_DOWN_FOR}. JWT policies go on with the last good keys (new "
            "signing keys are not seen); introspection policies apply their fail mode — closed refuses every "
            "opaque token (503), open lets requests through unauthenticated.",
            "Decisions: the providers' up/down timeline and gatewatch.auth.provider.transition events (why: "
            "timeout, refused, status, garbage, wrong issuer). Check the provider's reachability from every "
            "Gatewatch replica, its TLS (ca_file) and its answers.",
            "decisions", signals=(provider_up,)),
        AlertRule(
            "GatewatchTelemetryDropping", f"{drop_share} > 0.01", "15m", "ticket",
            "Gatewatch drops {{ $value | humanizePercentage }} of its {{ $labels.signal }}",
            "More than 1 % of {{ $labels.signal }} items have been dropped over 10 minutes for 15 minutes "
            "(queue full or export failed): traces or decision logs are missing. Requests are not affected.",
            "Gatewatch itself: drops by reason. export_failed → the collector is down or refusing; queue_full → "
            "the collector is too slow for the traffic (scale it, or raise the queue/batch sizes, or sample).",
            "self", signals=(exported, drop_share)),
        AlertRule(
            "GatewatchTLSCertificateExpiringSoon", f"{cert_days_left} < {CERT_EXPIRY_DAYS}", "10m", "ticket",
            "Certificate {{ $labels.certificate }} on listener {{ $labels.gatewatch_listener }} expires in "
            "{{ $value | printf \"%.1f\" }} days",
            f"A certificate Gatewatch serves (listener {{{{ $labels.gatewatch_listener }}}}, serial "
            f"{{{{ $labels.serial }}}}) expires in less than {CERT_EXPIRY_DAYS} days. After it does, every client "
            "refuses the handshake.",
            "Gatewatch itself: TLS termination (days left per certificate). Renew the certificate, write the files "
            "the listener's tls.certificates name, and reload (SIGHUP or POST /reload): new connections get the "
            "new certificate and the old one's series disappears.",
            "self", signals=(cert_days_left,)),
        AlertRule(
            "GatewatchMirrorDivergence",
            f"{diverged}\n> on ({R}) group_left ()\n{primary_5xx} + {MIRROR_DIVERGENCE_MARGIN}\n"
            f"and\n{compared} > {MIN_MIRROR_RPS}", "15m", "ticket",
            "Route {{ $labels.gatewatch_route }}: shadow {{ $labels.gatewatch_upstream }} diverges from the "
            "primary on {{ $value | humanizePercentage }} of mirrored requests",
            f"Over {MIRROR_WINDOW}, the shadow {{{{ $labels.gatewatch_upstream }}}} of route "
            f"{{{{ $labels.gatewatch_route }}}} failed, timed out or answered another status class than the "
            f"primary on a share of the mirrored requests more than {MIRROR_DIVERGENCE_MARGIN:.0%} above the "
            "route's own 5xx share, for 15 minutes (longer than the window: a burst of a few minutes cannot fire "
            "it). Clients are not affected (a shadow's answer is discarded); "
            "the version under test would be, if it took the traffic.",
            "Traffic: Shadow vs primary (error, timeout or differing status) and the latency difference; the "
            "shadow's CLIENT spans (gatewatch.mirror = true) carry gatewatch.mirror.match and the primary's status. "
            "Hold the rollout of the shadowed version and look at its errors.",
            "traffic", {"route": "{{ $labels.gatewatch_route }}"}, signals=(diverged, primary_5xx, compared)),
        AlertRule(
            "GatewatchCacheHitRatioCollapsed",
            f"{hit_ratio}\n< {CACHE_COLLAPSE_FRACTION} * {hit_ratio_yesterday}\nand\n{hit_ratio_yesterday} > "
            f"{CACHE_USEFUL_RATIO}\nand\n{cache_rps} > {MIN_CACHE_RPS}", "15m", "ticket",
            "Route {{ $labels.gatewatch_route }}: cache hit ratio down to {{ $value | humanizePercentage }}",
            f"The share of route {{{{ $labels.gatewatch_route }}}}'s requests answered from its cache over "
            f"{CACHE_WINDOW} is below {CACHE_COLLAPSE_FRACTION:.0%} of what it was at the same time a day earlier "
            f"(when it was above {CACHE_USEFUL_RATIO:.0%}), with traffic, for 15 minutes: the upstream now takes "
            "the requests the cache used to absorb.",
            "Traffic: cache results and the misses/bypasses by reason. A new bypass reason (no_store, private, "
            "set_cookie, authorization) means the upstream's response headers changed; vary_mismatch or absent "
            "with many evictions (capacity) means the key space grew past max_bytes / max_entries; a reload or a "
            "restart empties the cache (it refills).",
            "traffic", {"route": "{{ $labels.gatewatch_route }}"},
            signals=(hit_ratio, cache_rps)),  # yesterday's needs a day of history: promtool's cases have it
        AlertRule(
            "GatewatchHTTP2RapidReset", f"{rapid_resets} > 0", "0m", "ticket",
            "Listener {{ $labels.gatewatch_listener }}: HTTP/2 connections ended for rapid reset",
            f"Over the last {RAPID_RESET_WINDOW}, listener {{{{ $labels.gatewatch_listener }}}} ended "
            "{{ $value | printf \"%.0f\" }} HTTP/2 connection(s) with GOAWAY ENHANCE_YOUR_CALM because the client "
            "reset or had refused more streams than http2.max_resets within http2.reset_window_s: the rapid-reset "
            "attack (CVE-2023-44487), or a badly broken client. The defence has already acted (each such "
            "connection is closed, its streams cost little): a ticket, not a page — if the attack hurts real "
            "traffic, the SLO burn alerts page.",
            "Protocols: HTTP/2 resets and GOAWAYs by reason. The SERVER spans and the listener's logs name the "
            "client addresses; block repeat offenders upstream of Gatewatch (firewall, CDN). If it is a legitimate "
            "client (a gRPC client cancelling many calls), raise http2.max_resets for that listener.",
            "protocols", signals=(rapid_resets,)),
        AlertRule(
            "GatewatchDrainGraceExpired", f"{grace_expired} > 0\nor\n{cut} > 0", "0m", "ticket",
            "{{ $labels.instance }}: a drain cut client connections",
            f"In the last {DRAIN_WINDOW}, a SIGTERM drain of {{{{ $labels.instance }}}} ran out of drain.grace_s "
            "and cut the connections still open (grace_expired, or connections closed with reason deadline): "
            "those clients saw a reset or a truncated response during a restart that should have been invisible.",
            "Gatewatch itself: drain steps and connections closed by reason. Long requests or streams (WebSocket, "
            "gRPC streams, large downloads) outlive the grace: raise drain.grace_s (and the orchestrator's "
            "termination grace period above it), or lower the routes' timeouts.",
            "self", signals=(grace_expired, cut)),
        AlertRule(
            "GatewatchDiscoveryFailing", f"{discovery_failed} > 0\nand on ({PL}, {Label.SOURCE})\n{discovery_ok} == 0",
            "0m", "ticket",
            "Pool {{ $labels.gatewatch_pool }}: {{ $labels.source }} discovery failing, serving the last good set",
            f"Every refresh of pool {{{{ $labels.gatewatch_pool }}}}'s instances ({{{{ $labels.source }}}}) in the "
            f"last {DISCOVERY_WINDOW} failed. The pool keeps its last good set of instances, so requests are still "
            "served, but it no longer follows scale-ups, moves or removals: new instances get no traffic and "
            "removed ones keep getting it (until health checks or outlier detection catch them).",
            "Balancer & health: discovery refreshes by result (nxdomain / servfail / timeout: DNS; invalid: the "
            "file or API answer; error: unreachable or refused), and the gatewatch.discovery.failure events. The "
            "admin /upstreams shows the pool's last refresh, last success and last error.",
            "balancer", {"pool": f"{{{{ $labels.{PL} }}}}"}, signals=(discovery_failed, discovery_ok)),
        AlertRule(
            "GatewatchAdminAuthFailures", f"{admin_invalid} > {ADMIN_INVALID_TOKENS}", "0m", "ticket",
            "{{ $labels.instance }}: {{ $value | printf \"%.0f\" }} invalid admin tokens in 5 minutes",
            f"The admin API of {{{{ $labels.instance }}}} refused more than {ADMIN_INVALID_TOKENS} well-formed but "
            f"wrong bearer tokens in {ADMIN_AUTH_WINDOW}: someone guessing tokens, or an automation still using a "
            "rotated one (it is locked out of reloads, drains and state).",
            "Gatewatch itself: admin auth failures by reason. Find the caller (the admin listener's access log "
            "and the client address); if it is your automation, give it the current token; if not, the admin "
            "listener is reachable by someone it should not be — restrict its address.",
            "self", signals=(admin_invalid,)),
        AlertRule(
            "GatewatchBalancerSilent", f"absent({ENDPOINTS})", "2m", "page",
            "No Gatewatch balancer is reporting metrics",
            "No process has exported gatewatch_endpoints (the balancer's pool gauges) for 2 minutes: the "
            "balancer is down, or Prometheus cannot scrape it. (Remove this rule for gateway-only deployments, "
            "which have no pools.)",
            "Check the balancer processes and Prometheus's targets page (is the scrape failing?). Until it is "
            "back, nothing on the Balancer & health board can be trusted.",
            "self", signals=(f"count({ENDPOINTS})",)),
    ]
    return out


def rule_file(opts: BuildOptions) -> dict:
    return {"groups": [{"name": "gatewatch", "rules": [r.document(opts.grafana_url) for r in rules(opts)]}]}

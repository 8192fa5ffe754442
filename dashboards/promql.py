"""PromQL built from `telemetry.names` only: series names, selectors, rates and quantiles.

Primitives: `series(metric, suffix)` (the exposed name of a counter/histogram series), `sel(name, **matchers)`
(a selector; a value starting with `~` is a regex match), `rate`/`increase`, `quantile`, `ratio`. Panels and
alert rules never spell a metric name themselves, so a name changed in `telemetry/names.py` changes here too and
a name that does not exist there cannot be written (tests/dashboards checks the output).

Grafana variables appear as `$route`-style strings; `RATE` is Grafana's `$__rate_interval`.
"""

from __future__ import annotations

from gatewatch.telemetry.names import EndpointState, FailoverKind, Label, Layer, Metric, ProbeResult

RATE = "$__rate_interval"
RANGE = "$__range"


def series(metric: str, suffix: str = "") -> str:
    """The exposed series name: `series(Metric.DECISIONS, "total")` → `gatewatch_decisions_total`."""
    return f"{metric}_{suffix}" if suffix else metric


# Series the panels and rules use (histograms expose _bucket/_count/_sum; counters _total; Info _info).
SERVER_BUCKET = series(Metric.SERVER_DURATION, "bucket")
SERVER_COUNT = series(Metric.SERVER_DURATION, "count")
SERVER_SUM = series(Metric.SERVER_DURATION, "sum")
CLIENT_BUCKET = series(Metric.CLIENT_DURATION, "bucket")
CLIENT_COUNT = series(Metric.CLIENT_DURATION, "count")
CLIENT_SUM = series(Metric.CLIENT_DURATION, "sum")
DECISIONS = series(Metric.DECISIONS, "total")
FAILOVERS = series(Metric.FAILOVERS, "total")
EJECTIONS = series(Metric.EJECTIONS, "total")
RETRIES = series(Metric.RETRIES, "total")
RETRY_BUDGET_EXHAUSTED = series(Metric.RETRY_BUDGET_EXHAUSTED, "total")
HEALTH_PROBES = series(Metric.HEALTH_PROBES, "total")
HEALTH_TRANSITIONS = series(Metric.HEALTH_TRANSITIONS, "total")
INSTANCE_REQUESTS = series(Metric.INSTANCE_REQUESTS, "total")
POLICY_VERDICTS = series(Metric.POLICY_VERDICTS, "total")
RATE_LIMITED_CONSUMERS = series(Metric.RATE_LIMITED_CONSUMERS, "total")
CONFIG_RELOADS = series(Metric.CONFIG_RELOADS, "total")
TELEMETRY_DROPPED = series(Metric.TELEMETRY_DROPPED, "total")
TELEMETRY_EXPORTED = series(Metric.TELEMETRY_EXPORTED, "total")
BUILD_INFO = series(Metric.BUILD_INFO, "info")
CONFIG_INFO = series(Metric.CONFIG_INFO, "info")
CONFIG_LOADED = Metric.CONFIG_LOADED
POOL_REQUESTS = series(Metric.POOL_REQUESTS, "total")
RATELIMIT_STORE_UP = Metric.RATELIMIT_STORE_UP
AUTH_PROVIDER_UP = Metric.AUTH_PROVIDER_UP
ENDPOINTS = Metric.ENDPOINTS
IN_FLIGHT = Metric.IN_FLIGHT
EJECTED = Metric.EJECTIONS_ACTIVE
PANIC_MODE = Metric.PANIC_MODE
ACTIVE_PRIORITY = Metric.ACTIVE_PRIORITY
SLOW_START = Metric.SLOW_START_WEIGHT
CIRCUIT_STATE = Metric.CIRCUIT_STATE
PROCESS_START_TIME = Metric.PROCESS_START_TIME
PROCESS_CPU = series(Metric.PROCESS_CPU, "total")
PROCESS_RSS = Metric.PROCESS_RSS
TELEMETRY_QUEUE = Metric.TELEMETRY_QUEUE
TLS_HANDSHAKES = series(Metric.TLS_HANDSHAKES, "total")
TLS_HANDSHAKE_FAILURES = series(Metric.TLS_HANDSHAKE_FAILURES, "total")
TLS_CERT_EXPIRY = Metric.TLS_CERT_EXPIRY
# protocols (issue 17), L4 TCP, drain, admin, discovery
WEBSOCKET_SESSIONS = Metric.WEBSOCKET_SESSIONS
WEBSOCKET_ENDED = series(Metric.WEBSOCKET_SESSIONS_ENDED, "total")
TCP_CONNECTIONS = series(Metric.TCP_CONNECTIONS, "total")
TCP_ACTIVE = Metric.TCP_ACTIVE
TCP_RECEIVED = series(Metric.TCP_RECEIVED, "total")
TCP_SENT = series(Metric.TCP_SENT, "total")
TCP_CONNECT_BUCKET = series(Metric.TCP_CONNECT_DURATION, "bucket")
HTTP2_EVENTS = series(Metric.HTTP2_EVENTS, "total")
DRAIN_STEPS = series(Metric.DRAIN_STEPS, "total")
DRAIN_CLOSED = series(Metric.DRAIN_CONNECTIONS_CLOSED, "total")
ADMIN_AUTH_FAILURES = series(Metric.ADMIN_AUTH_FAILURES, "total")
DISCOVERY_REFRESHES = series(Metric.DISCOVERY_REFRESHES, "total")

EDGE = {Label.LAYER: Layer.EDGE.value}
BALANCER = {Label.LAYER: Layer.BALANCER.value}
SERVER_ERROR = {Label.STATUS: "~5.."}  # the SLO's "bad" requests: answered (or failed) with a 5xx
FAILING_OVER = {Label.FAILOVER: "!" + FailoverKind.NONE.value}  # served by a retry elsewhere, a failover level, panic
# The endpoints gauge by state: an instance in slow start is counted under `healthy` *and* `slow_start`, so the
# instances taking traffic are the `healthy` ones and a pool's instances are every state but `slow_start`.
TAKING_TRAFFIC = {Label.STATE: EndpointState.HEALTHY.value}
COUNTED_ONCE = {Label.STATE: "!" + EndpointState.SLOW_START.value}
# The `result` values of gatewatch_health_probes_total as the runtime writes them (balancer/checker.py,
# app/series.py). telemetry.names has no enum for them yet; tests/dashboards/test_static.py checks these two
# against the series the runtime creates, so a renamed value fails there instead of silencing a rule.
PROBE_PASS, PROBE_FAIL = ProbeResult.PASS.value, ProbeResult.FAIL.value


def sel(name: str, *matchers: dict[str, str], **more: str) -> str:
    """`sel(SERVER_COUNT, EDGE, gatewatch_route="~$route")` → `..._count{gatewatch_layer="edge",gatewatch_route=~"$route"}`.

    A value starting with `~` is a regex match, `!~` a negative regex, `!` a negative match."""
    merged: dict[str, str] = {}
    for m in matchers:
        merged.update(m)
    merged.update(more)
    parts = []
    for label, value in merged.items():
        op = "="
        if value.startswith("~"):
            op, value = "=~", value[1:]
        elif value.startswith("!~"):
            op, value = "!~", value[2:]
        elif value.startswith("!"):
            op, value = "!=", value[1:]
        parts.append(f'{label}{op}"{value}"')
    return f"{name}{{{','.join(parts)}}}" if parts else name


def by(*labels: str) -> str:
    return f"by ({', '.join(labels)})" if labels else ""


def rate(selector: str, window: str = RATE, offset: str = "") -> str:
    """`offset` (`1d`): the rate that far in the past."""
    return f"rate({selector}[{window}]{f' offset {offset}' if offset else ''})"


def increase(selector: str, window: str = RATE) -> str:
    return f"increase({selector}[{window}])"


def sum_(expr: str, *labels: str) -> str:
    return f"sum {by(*labels)} ({expr})".replace("sum  (", "sum (")


def sum_rate(selector: str, *labels: str, window: str = RATE, offset: str = "") -> str:
    return sum_(rate(selector, window, offset), *labels)


def quantile(q: float, bucket_selector: str, *labels: str, window: str = RATE) -> str:
    return f"histogram_quantile({q}, {sum_rate(bucket_selector, *labels, 'le', window=window)})"


def ratio(numerator: str, denominator: str) -> str:
    return f"({numerator}) / ({denominator})"


def regex_of(values) -> str:
    """An anchored alternation of closed-enum values, dots escaped: `jwt\\\\.expired|apikey\\\\.invalid`."""
    return "|".join(str(v).replace(".", "\\\\.") for v in values)


def or_zero(part: str, whole: str) -> str:
    """`part`, or 0 for each series of `whole` that has no `part` (no 5xx yet reads 0 %, not "No data").

    Both sides must be aggregated to the same labels; `whole` is the same metric without the narrowing matcher,
    so a zero is only shown where the metric itself exists."""
    return f"({part} or {whole} * 0)"


# --- shared definitions: a rule and the panel that explains it read the same expression -------------------


def failover_share(*matchers: dict[str, str], by: tuple[str, ...] = (Label.POOL,), window: str = RATE) -> str:
    """Share of the requests a pool served while failing over (`failover` != none) over `window`.

    `by` may add `failover` to split the share by kind; the denominator is always every request of the pool."""
    failing = sum_rate(sel(POOL_REQUESTS, FAILING_OVER, *matchers), *by, window=window)
    served = sum_rate(sel(POOL_REQUESTS, *matchers), Label.POOL, window=window)
    if tuple(by) == (Label.POOL,):
        return ratio(failing, served)
    return f"{failing} / on ({Label.POOL}) group_left () {served}"


def pool_request_rate(*matchers: dict[str, str], window: str = RATE) -> str:
    """Requests/s a pool served (every kind)."""
    return sum_rate(sel(POOL_REQUESTS, *matchers), Label.POOL, window=window)


def ejections_and_probes(window: str, *matchers: dict[str, str]) -> tuple[str, str, str]:
    """Per pool and instance over `window`: outlier ejections, active probes that passed, probes that failed."""
    pi = (Label.POOL, Label.INSTANCE)
    return (sum_(increase(sel(EJECTIONS, *matchers), window), *pi),
            sum_(increase(sel(HEALTH_PROBES, *matchers, result=PROBE_PASS), window), *pi),
            sum_(increase(sel(HEALTH_PROBES, *matchers, result=PROBE_FAIL), window), *pi))


def serving_and_instances(*matchers: dict[str, str]) -> tuple[str, str]:
    """Per pool: instances taking traffic (healthy, slow start included) and all instances, each counted once."""
    return (f"sum by ({Label.POOL}) ({sel(ENDPOINTS, TAKING_TRAFFIC, *matchers)})",
            f"sum by ({Label.POOL}) ({sel(ENDPOINTS, COUNTED_ONCE, *matchers)})")

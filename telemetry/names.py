"""Every telemetry name Gatewatch emits: metric names and labels, span attributes, event names, closed enums.

Dashboards and alert rules import this module too, so a name changed here changes everywhere at once and a
name used elsewhere that is not defined here is a bug (tests check it).

Primitives: `Outcome` (how a request ended, a closed vocabulary), `Layer`, `ErrorType`, `Event` (decision-log
event names), `Attr` (span/log attribute keys), `Metric` and `Label` (Prometheus names), `DURATION_BUCKETS_S`.
"""

from __future__ import annotations

from enum import StrEnum


class Layer(StrEnum):
    EDGE = "edge"
    BALANCER = "balancer"


class Outcome(StrEnum):
    """How one request ended, as seen by one layer. Recorded on the SERVER span, in metrics and in logs."""

    PROXIED = "proxied"  # an upstream answered and its response was relayed in full
    NO_ROUTE = "no_route"  # 404: no route matched
    BAD_REQUEST = "bad_request"  # 400: the request itself is malformed (e.g. invalid path encoding)
    DENIED_AUTH = "denied_auth"  # 401/403: an authentication or access policy refused it
    RATE_LIMITED = "rate_limited"  # 429: a rate limit refused it
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"  # 503: the pool had no instance to pick
    UPSTREAM_CONNECT_ERROR = "upstream_connect_error"  # 502: no connection could be made
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504: connect/response/idle timeout before the response was complete
    UPSTREAM_ERROR = "upstream_error"  # 502 or aborted transfer: reset, protocol error, died mid-body
    CLIENT_ABORT = "client_abort"  # the client went away before the response was complete
    CLIENT_TIMEOUT = "client_timeout"  # 408: the client's request body stalled longer than the route's idle_s
    INTERNAL_ERROR = "internal_error"  # 500: a Gatewatch bug; never expected


# The HTTP status each locally generated outcome answers with.
OUTCOME_STATUS: dict[Outcome, int] = {
    Outcome.NO_ROUTE: 404,
    Outcome.BAD_REQUEST: 400,
    Outcome.CLIENT_TIMEOUT: 408,
    Outcome.DENIED_AUTH: 403,
    Outcome.RATE_LIMITED: 429,
    Outcome.NO_HEALTHY_UPSTREAM: 503,
    Outcome.UPSTREAM_CONNECT_ERROR: 502,
    Outcome.UPSTREAM_TIMEOUT: 504,
    Outcome.UPSTREAM_ERROR: 502,
    Outcome.INTERNAL_ERROR: 500,
}


class ErrorType(StrEnum):
    """`error.type` values for upstream attempts (closed; semconv allows low-cardinality project values)."""

    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    RESPONSE_TIMEOUT = "response_timeout"  # no response head within the route's response timeout
    READ_TIMEOUT = "read_timeout"  # the body stalled longer than the idle timeout
    UPSTREAM_RESET = "upstream_reset"  # the connection closed or reset before the response was complete
    PROTOCOL_ERROR = "protocol_error"  # the upstream's reply was not valid HTTP
    CLIENT_ABORT = "client_abort"
    CLIENT_TIMEOUT = "client_timeout"
    INTERNAL = "_OTHER"


class DecisionKind(StrEnum):
    ROUTE = "route"
    POLICY = "policy"
    PICK = "pick"
    RETRY = "retry"
    FAILOVER = "failover"


class Event(StrEnum):
    """`event_name` of decision-log records (OTLP log records)."""

    DECISION_ROUTE = "gatewatch.decision.route"
    DECISION_POLICY = "gatewatch.decision.policy"
    DECISION_PICK = "gatewatch.decision.pick"
    DECISION_RETRY = "gatewatch.decision.retry"
    DECISION_FAILOVER = "gatewatch.decision.failover"
    HEALTH_TRANSITION = "gatewatch.health.transition"
    OUTLIER_EJECTION = "gatewatch.outlier.ejection"
    CIRCUIT_TRANSITION = "gatewatch.circuit.transition"
    CONFIG_RELOAD = "gatewatch.config.reload"


DECISION_EVENTS: dict[DecisionKind, Event] = {
    DecisionKind.ROUTE: Event.DECISION_ROUTE,
    DecisionKind.POLICY: Event.DECISION_POLICY,
    DecisionKind.PICK: Event.DECISION_PICK,
    DecisionKind.RETRY: Event.DECISION_RETRY,
    DecisionKind.FAILOVER: Event.DECISION_FAILOVER,
}


class Attr:
    """Span and log attribute keys: OTel HTTP semantic conventions (stable) plus `gatewatch.*`."""

    HTTP_REQUEST_METHOD = "http.request.method"
    HTTP_REQUEST_METHOD_ORIGINAL = "http.request.method_original"
    HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
    HTTP_ROUTE = "http.route"
    HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"
    URL_PATH = "url.path"
    URL_QUERY = "url.query"
    URL_SCHEME = "url.scheme"
    URL_FULL = "url.full"
    SERVER_ADDRESS = "server.address"
    SERVER_PORT = "server.port"
    CLIENT_ADDRESS = "client.address"
    NETWORK_PEER_ADDRESS = "network.peer.address"
    NETWORK_PEER_PORT = "network.peer.port"
    NETWORK_PROTOCOL_VERSION = "network.protocol.version"
    USER_AGENT_ORIGINAL = "user_agent.original"
    ERROR_TYPE = "error.type"

    LAYER = "gatewatch.layer"
    ROUTE = "gatewatch.route"
    UPSTREAM = "gatewatch.upstream"
    INSTANCE = "gatewatch.instance"
    ZONE = "gatewatch.zone"
    OUTCOME = "gatewatch.outcome"
    REQUEST_ID = "gatewatch.request_id"
    LB_ALGORITHM = "gatewatch.lb.algorithm"
    LB_CANDIDATES = "gatewatch.lb.candidates"
    LB_EXCLUDED = "gatewatch.lb.excluded"
    LB_WEIGHT = "gatewatch.lb.weight"
    LB_IN_FLIGHT = "gatewatch.lb.in_flight"
    POLICY_SUMMARY = "gatewatch.policy.summary"
    # decision-log record attributes
    DECISION = "gatewatch.decision"  # DecisionKind
    DECISION_RULE = "gatewatch.decision.rule"  # the route/policy/pool name that decided
    DECISION_RESULT = "gatewatch.decision.result"  # e.g. matched / no_match / picked / no_healthy
    DECISION_REASON = "gatewatch.decision.reason"  # closed vocabulary, see Reason
    TRACE_CONTEXT = "gatewatch.trace_context"  # how the inbound trace context was treated


class Reason(StrEnum):
    """Closed vocabulary of decision reasons."""

    ROUTE_MATCHED = "route.matched"
    ROUTE_NO_MATCH = "route.no_match"
    PICK_ROUND_ROBIN = "pick.round_robin"
    PICK_WEIGHTED = "pick.weighted_round_robin"
    PICK_STATIC = "pick.static"
    PICK_NO_CANDIDATES = "pick.no_candidates"


class Metric:
    """Prometheus metric names (without the `_bucket`/`_total` suffix that the exposition adds where noted)."""

    SERVER_DURATION = "http_server_request_duration_seconds"
    CLIENT_DURATION = "http_client_request_duration_seconds"
    DECISIONS = "gatewatch_decisions"  # counter -> gatewatch_decisions_total
    FAILOVERS = "gatewatch_failovers"  # counter -> gatewatch_failovers_total
    EJECTIONS = "gatewatch_ejections"  # counter -> gatewatch_ejections_total
    RETRIES = "gatewatch_retries"  # counter -> gatewatch_retries_total
    ENDPOINTS = "gatewatch_endpoints"  # gauge, by pool and state
    IN_FLIGHT = "gatewatch_upstream_in_flight_requests"  # gauge, by pool and instance
    TELEMETRY_DROPPED = "gatewatch_telemetry_dropped"  # counter -> gatewatch_telemetry_dropped_total
    TELEMETRY_EXPORTED = "gatewatch_telemetry_exported"  # counter -> gatewatch_telemetry_exported_total
    TELEMETRY_QUEUE = "gatewatch_telemetry_queue_items"  # gauge
    BUILD_INFO = "gatewatch_build"  # info -> gatewatch_build_info


class Label:
    LAYER = "gatewatch_layer"
    ROUTE = "gatewatch_route"
    UPSTREAM = "gatewatch_upstream"
    INSTANCE = "gatewatch_instance"
    OUTCOME = "gatewatch_outcome"
    POOL = "gatewatch_pool"
    STATE = "state"
    METHOD = "http_request_method"
    STATUS = "http_response_status_code"
    DECISION = "decision"
    RESULT = "result"
    SIGNAL = "signal"
    REASON = "reason"


class EndpointState(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"


class TelemetrySignal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"


class DropReason(StrEnum):
    QUEUE_FULL = "queue_full"
    EXPORT_FAILED = "export_failed"
    SHUTDOWN = "shutdown"


# OTel semconv's recommended buckets for http.*.request.duration (seconds).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)

# Methods that may be metric labels as-is; anything else is recorded as "_OTHER" (semconv).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

SCOPE_NAME = "gatewatch"

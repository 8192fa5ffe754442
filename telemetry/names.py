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
    UPSTREAM_TLS_ERROR = "upstream_tls_error"  # 502: connected, but the TLS handshake failed (see gatewatch.tls.failure)
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504: connect/response/idle timeout before the response was complete
    UPSTREAM_ERROR = "upstream_error"  # 502 or aborted transfer: reset, protocol error, died mid-body
    CLIENT_ABORT = "client_abort"  # the client went away before the response was complete
    CLIENT_TIMEOUT = "client_timeout"  # 408: the client's request body stalled longer than the route's idle_s
    DENIED_POLICY = "denied_policy"  # 403: an access rule (IP list, CORS origin) refused it
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413: the body exceeds the route's size limit
    INVALID_BODY = "invalid_body"  # 400: the body failed the route's JSON schema
    PREFLIGHT = "preflight"  # 204: a CORS preflight answered by the gateway itself
    CIRCUIT_OPEN = "circuit_open"  # 503: the route's circuit breaker is open
    UPSTREAM_OVERFLOW = "upstream_overflow"  # 503: every candidate instance is at its connection/pending limit
    INTERNAL_ERROR = "internal_error"  # 500: a Gatewatch bug; never expected


# The HTTP status each locally generated outcome answers with.
OUTCOME_STATUS: dict[Outcome, int] = {
    Outcome.NO_ROUTE: 404,
    Outcome.BAD_REQUEST: 400,
    Outcome.CLIENT_TIMEOUT: 408,
    Outcome.DENIED_AUTH: 403,
    Outcome.RATE_LIMITED: 429,
    Outcome.DENIED_POLICY: 403,
    Outcome.PAYLOAD_TOO_LARGE: 413,
    Outcome.INVALID_BODY: 400,
    Outcome.PREFLIGHT: 204,
    Outcome.CIRCUIT_OPEN: 503,
    Outcome.UPSTREAM_OVERFLOW: 503,
    Outcome.NO_HEALTHY_UPSTREAM: 503,
    Outcome.UPSTREAM_CONNECT_ERROR: 502,
    Outcome.UPSTREAM_TLS_ERROR: 502,
    Outcome.UPSTREAM_TIMEOUT: 504,
    Outcome.UPSTREAM_ERROR: 502,
    Outcome.INTERNAL_ERROR: 500,
}


class ErrorType(StrEnum):
    """`error.type` values for upstream attempts (closed; semconv allows low-cardinality project values)."""

    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    UPSTREAM_TLS_ERROR = "upstream_tls_error"  # the TLS handshake failed; `TlsFailure` says why
    RESPONSE_TIMEOUT = "response_timeout"  # no response head within the route's response timeout
    READ_TIMEOUT = "read_timeout"  # the body stalled longer than the idle timeout
    UPSTREAM_RESET = "upstream_reset"  # the connection closed or reset before the response was complete
    PROTOCOL_ERROR = "protocol_error"  # the upstream's reply was not valid HTTP
    STATUS_5XX = "status_5xx"  # the upstream answered with a retryable 5xx status (retried, or relayed)
    CLIENT_ABORT = "client_abort"
    CLIENT_TIMEOUT = "client_timeout"
    INTERNAL = "_OTHER"
    # the connect step that failed, told apart (issue 18): CONNECT_REFUSED is only a refused TCP connection now
    DNS_ERROR = "dns_error"  # the host name did not resolve (NXDOMAIN, no address) or its lookup outlasted connect_s
    CONNECT_ERROR = "connect_error"  # any other connect failure: network or host unreachable, no local port left
    # an aggregate route's call (issue 19): answered, but not usable as a part of the composed response
    UNEXPECTED_STATUS = "unexpected_status"  # a status other than 2xx
    RESPONSE_NOT_JSON = "response_not_json"  # the body is not JSON (or, to be merged, not a JSON object)
    RESPONSE_TOO_LARGE = "response_too_large"  # the body exceeds the call's max_body_bytes
    CANCELLED = "cancelled"  # stopped because another call had already failed the request (on_error: fail)
    # WebSocket (issue 17): the upstream answered 101 but not as RFC 6455 §4.2.2 requires (Upgrade, Accept)
    WEBSOCKET_HANDSHAKE_FAILED = "websocket_handshake_failed"
    # gRPC (issue 17): the call's grpc-timeout passed while its response was streaming (cut, grpc-status 4)
    DEADLINE_EXCEEDED = "deadline_exceeded"


class TlsFailure(StrEnum):
    """Why a TLS handshake with an upstream failed: `gatewatch.tls.failure` on the attempt's CLIENT span, and in
    the 502 body's message. From the OpenSSL verify code or alert (`gatewatch.io.tls.failure_of`)."""

    UNKNOWN_CA = "unknown_ca"  # the chain does not end at a CA this upstream's `ca_file` (or the system) trusts
    NAME_MISMATCH = "name_mismatch"  # the certificate is not for the name verified (`server_name`, else the host)
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    CLIENT_CERT_REJECTED = "client_cert_rejected"  # the upstream refused our client certificate (or its absence)
    PROTOCOL_VERSION = "protocol_version"  # no TLS version both sides accept (`min_version`)
    NOT_TLS = "not_tls"  # the upstream answered in plaintext
    HANDSHAKE_FAILED = "handshake_failed"  # any other handshake failure


class TlsHandshakeFailure(StrEnum):
    """Why a client's TLS handshake with a listener failed: the `reason` of
    `gatewatch_tls_handshake_failures_total` (`gatewatch.io.tls.server_failure_of`). The connection is closed
    without an HTTP answer: there is no channel to send one on."""

    NOT_TLS = "not_tls"  # plaintext (e.g. an HTTP request) sent to a TLS listener
    PROTOCOL_VERSION = "protocol_version"  # the client offers only versions below the listener's min_version
    NO_SHARED_CIPHER = "no_shared_cipher"
    SERVER_CERT_REJECTED = "server_cert_rejected"  # the client refused our certificate (its alert says so)
    NO_CLIENT_CERT = "no_client_cert"  # client_auth: required, and the client sent none
    CLIENT_CERT_UNKNOWN_CA = "client_cert_unknown_ca"  # the client certificate's chain is not from client_ca_file
    CLIENT_CERT_EXPIRED = "client_cert_expired"
    CLIENT_CERT_NOT_YET_VALID = "client_cert_not_yet_valid"
    CLIENT_CERT_INVALID = "client_cert_invalid"  # any other verification failure of the client certificate
    TIMEOUT = "timeout"  # the handshake did not finish within handshake_timeout_s (a stalled client)
    CLIENT_CLOSED = "client_closed"  # the client closed or reset the connection mid-handshake
    HANDSHAKE_FAILED = "handshake_failed"  # any other failure


class RejectReason(StrEnum):
    """`error.type` of a request refused before it reaches routing (outcome `bad_request`): by the listener (the
    request line and framing) or by the engine (the target's path, header names). docs/refusals.md lists each
    with its status and rule."""

    FRAMING_CONFLICT = "framing_conflict"  # Content-Length and Transfer-Encoding together (smuggling shape)
    INVALID_CONTENT_LENGTH = "invalid_content_length"
    INVALID_CHUNKED_ENCODING = "invalid_chunked_encoding"
    INVALID_METHOD = "invalid_method"
    INVALID_TARGET = "invalid_target"
    INVALID_HOST = "invalid_host"  # not exactly one Host in HTTP/1.1 (RFC 9112 §3.2)
    PARSE_ERROR = "parse_error"  # any other syntax error
    HEAD_TIMEOUT = "head_timeout"  # the request head did not arrive in time (slowloris)
    URI_TOO_LONG = "uri_too_long"
    EXPECTATION_FAILED = "expectation_failed"  # an Expect other than 100-continue
    HEADER_TOO_LARGE = "header_too_large"
    UPGRADE_NOT_SUPPORTED = "upgrade_not_supported"
    UNSUPPORTED_TRANSFER_CODING = "unsupported_transfer_coding"  # a coding other than chunked (RFC 9112 §6.1)
    # the request line (RFC 9112 §3, §2.3; RFC 9110 §9.1)
    UNSUPPORTED_HTTP_VERSION = "unsupported_http_version"  # 505: well-formed, but not HTTP/1.0 or HTTP/1.1
    INVALID_HTTP_VERSION = "invalid_http_version"  # 400: not HTTP-name "/" DIGIT "." DIGIT
    UNSUPPORTED_METHOD = "unsupported_method"  # 501: a token, but not a method the parser knows
    # the request target (engine, `edge.paths`): answered 400 before routing
    FRAGMENT_IN_TARGET = "fragment_in_target"  # '#...' (RFC 9112 §3.2)
    PATH_INVALID_CHAR = "path_invalid_char"  # a raw character RFC 3986 §3.3 does not allow (backslash, space, ...)
    PATH_INVALID_PERCENT = "path_invalid_percent"  # '%' not followed by two hex digits
    PATH_CONTROL_CHAR = "path_control_char"  # a control character, raw or percent-encoded (%00, %0A, %7F)
    PATH_ESCAPED_SLASH = "path_escaped_slash"  # %2F / %5C (escaped_slashes: reject, or next to a dot segment)
    PATH_DOUBLE_ENCODING = "path_double_encoding"  # %25 followed by hex (%252e)
    PATH_INVALID_UTF8 = "path_invalid_utf8"  # escapes that are not UTF-8, overlong forms included (%C0%AE)
    PATH_PARAMETER = "path_parameter"  # ';' (path_parameters: reject, or on a dot segment: '..;')
    # header fields (engine)
    UNDERSCORE_IN_HEADER_NAME = "underscore_in_header_name"  # headers_with_underscores: reject
    # a WebSocket opening handshake the listener refuses (RFC 6455 §4.1, §4.2.1; issue 17): answered 400
    WEBSOCKET_INVALID_HANDSHAKE = "websocket_invalid_handshake"  # not GET, a body, no valid Sec-WebSocket-Key
    WEBSOCKET_UNSUPPORTED_VERSION = "websocket_unsupported_version"  # Sec-WebSocket-Version other than 13


class HeaderDrop(StrEnum):
    """Why an inbound request header was removed or cut before routing (the request is served): the values of
    the SERVER span's `gatewatch.request.headers_dropped` and the `reason` of
    `gatewatch_request_headers_dropped_total`."""

    UNDERSCORE_IN_NAME = "underscore_in_name"  # headers_with_underscores: drop
    TRACESTATE_TRUNCATED = "tracestate_truncated"  # W3C Trace Context §3.3.1.5: over 512 characters or 32 members
    BAGGAGE_TRUNCATED = "baggage_truncated"  # over 8192 bytes or 180 members (W3C Baggage limits; OpenTelemetry's)


class DecisionKind(StrEnum):
    ROUTE = "route"
    POLICY = "policy"
    PICK = "pick"
    RETRY = "retry"
    FAILOVER = "failover"
    CACHE = "cache"  # the response cache's outcome for the request (issue 19)
    SPLIT = "split"  # which upstream of a route's weighted split took the request (issue 19)
    MIRROR = "mirror"  # whether the request was copied to the route's shadow upstream (issue 19)
    AGGREGATE = "aggregate"  # an aggregate route's composition: which calls made it in (issue 19)


class DecisionResult(StrEnum):
    """What a route, pick, retry or failover decision came to (`gatewatch.decision.result`, the `result` label of
    `gatewatch_decisions_total`). A policy decision's result is its `Verdict`."""

    MATCHED = "matched"  # a route matched
    NO_MATCH = "no_match"  # no route matched
    PICKED = "picked"  # the balancer chose an instance
    NO_CANDIDATES = "no_candidates"  # no instance could take the request
    OVERFLOW = "overflow"  # candidates existed, all at their connection limits
    RETRY = "retry"  # another attempt was granted
    REFUSED = "refused"  # another attempt was wanted and refused (the reason says why)
    FAILOVER = "failover"  # a retry went to a different instance
    CHOSEN = "chosen"  # a split's side, chosen by weight or stickiness (the reason says which)
    OVERRIDDEN = "overridden"  # a split's side forced by a tester's override header or cookie (always logged)
    COMPOSED = "composed"  # an aggregate response with every call's part
    PARTIAL = "partial"  # an aggregate response with failed calls left out (on_error: omit)
    FAILED = "failed"  # an aggregate request failed by a call (502/503/504)




# Response caching, RFC 9111 shared cache (issue 19)
class CacheResult(StrEnum):
    """How a route's response cache took part in one request: `gatewatch.cache.result` on the SERVER span, the
    result of its `gatewatch.decision.cache` record and the `result` of `gatewatch_cache_requests_total`."""

    HIT = "hit"  # a fresh stored response answered; the upstream was not asked
    MISS = "miss"  # no usable stored response: the request went upstream (a GET's response was stored)
    STALE = "stale"  # a stale stored response answered (stale-while-revalidate, stale-if-error)
    REVALIDATED = "revalidated"  # a stored response was confirmed by the upstream (304) and served
    BYPASS = "bypass"  # the request or the response may not be cached (the reason says which rule)


class CacheReason(StrEnum):
    """Why: `gatewatch.cache.reason`, the decision's reason and the `reason` of `gatewatch_cache_requests_total`."""

    FRESH = "fresh"  # hit: within its freshness lifetime (RFC 9111 §4.2)
    COALESCED = "coalesced"  # hit: answered by a concurrent request's upstream response (one request upstream)
    SHARED = "shared"  # hit: found in the route's shared (Redis) tier, stored by another process or replica
    ABSENT = "absent"  # miss: nothing stored for the key
    VARY_MISMATCH = "vary_mismatch"  # miss: stored for the URL, not for these request headers (RFC 9111 §4.1)
    EXPIRED = "expired"  # miss/revalidated: the stored response was stale
    NO_CACHE = "no_cache"  # miss/revalidated: the stored response must be validated on every use (no-cache)
    CLIENT_NO_CACHE = "client_no_cache"  # miss/revalidated: the request said no-cache or max-age=0
    STALE_WHILE_REVALIDATE = "stale_while_revalidate"  # stale: served, revalidated in the background (RFC 5861 §3)
    STALE_IF_ERROR = "stale_if_error"  # stale: the upstream failed, the stale response was served (RFC 5861 §4)
    METHOD = "method"  # bypass: not GET or HEAD (an unsafe method invalidates the URI, RFC 9111 §4.4)
    CLIENT_NO_STORE = "client_no_store"  # bypass: the request said no-store (RFC 9111 §5.2.1.5)
    RANGE = "range"  # bypass: a Range request (partial content is not cached)
    NO_STORE = "no_store"  # bypass: the response said no-store (RFC 9111 §5.2.2.5)
    PRIVATE = "private"  # bypass: the response said private (RFC 9111 §5.2.2.7)
    AUTHORIZATION = "authorization"  # bypass: a request with Authorization, response not marked shareable (§3.5)
    SET_COOKIE = "set_cookie"  # bypass: the response sets a cookie and the route does not allow storing it
    STATUS = "status"  # bypass: a status code that is not stored
    NO_FRESHNESS = "no_freshness"  # bypass: no expiration time, no heuristic, no validator: nothing to reuse
    VARY_STAR = "vary_star"  # bypass: Vary: * never matches a later request (RFC 9111 §4.1)
    TOO_LARGE = "too_large"  # bypass: the body exceeds the route's max_entry_bytes (passed through)


class CacheEviction(StrEnum):
    """Why stored responses left a cache: the `reason` of `gatewatch_cache_evictions_total`."""

    CAPACITY = "capacity"  # least recently used, to stay within max_bytes / max_entries
    INVALIDATED = "invalidated"  # an unsafe request to the same URI succeeded (RFC 9111 §4.4)
    EXPIRED = "expired"  # stale beyond any use (no validator, past every stale window)


# Weighted splits and request mirroring (issue 19)
class MirrorResult(StrEnum):
    """What became of a request the route's `mirror.percent` selected: the result of its
    `gatewatch.decision.mirror` record, `gatewatch.mirror.result` on its SERVER span and the `result` of
    `gatewatch_mirror_requests_total`. A skipped copy is never queued: it is not sent at all."""

    SENT = "sent"  # a copy went to the shadow upstream
    SKIPPED_FULL = "skipped_full"  # max_in_flight shadow requests were already under way
    SKIPPED_BODY = "skipped_body"  # the request body is larger than max_body_bytes
    SKIPPED_STREAMED = "skipped_streamed"  # a body of unknown length: copying it would delay the client
    SKIPPED_NO_INSTANCE = "skipped_no_instance"  # the shadow pool had no instance to take it


class MirrorMatch(StrEnum):
    """How a shadow's answer compared with the primary's: `gatewatch.mirror.match` on the shadow's CLIENT span
    and the `match` of `gatewatch_mirror_comparisons_total`."""

    SAME_STATUS_CLASS = "same_status_class"  # both answered, same status class (2xx/2xx, 5xx/5xx, ...)
    DIFFERS = "differs"  # both answered, different status classes (or the primary did not answer)
    SHADOW_ERROR = "shadow_error"  # the shadow failed: refused, reset, not HTTP, died mid-body
    SHADOW_TIMEOUT = "shadow_timeout"  # the shadow did not answer within mirror.timeout_s


ALLOW_RESULTS = frozenset({DecisionResult.MATCHED, DecisionResult.PICKED,  # decisions that let a request through
                           CacheResult.HIT, CacheResult.MISS, CacheResult.REVALIDATED, CacheResult.BYPASS,
                           DecisionResult.CHOSEN, *MirrorResult,
                           DecisionResult.COMPOSED, "allow"})  # "allow": a policy's (Verdict.ALLOW) logged allows


class AggregateCall(StrEnum):
    """How one call of an aggregate route ended: the `result` of `gatewatch_aggregate_calls_total`, and the
    reason in the response's `_partial` marker and the `gatewatch.decision.aggregate` record."""

    OK = "ok"  # a 2xx JSON answer within max_body_bytes: its part is in the response
    TIMEOUT = "timeout"  # no complete answer within the call's timeout_s
    CONNECT_ERROR = "connect_error"  # DNS, refused, unreachable
    TLS_ERROR = "tls_error"
    UPSTREAM_ERROR = "upstream_error"  # reset, not HTTP, died mid-body
    STATUS = "status"  # answered with a status other than 2xx
    NOT_JSON = "not_json"  # the body is not JSON
    NOT_OBJECT = "not_object"  # compose: merge, and the body is JSON but not an object
    TOO_LARGE = "too_large"  # the body exceeds max_body_bytes
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"  # the pool had no instance to pick
    OVERFLOW = "overflow"  # every instance of the pool was at its connection limit
    CANCELLED = "cancelled"  # another call had already failed the request (on_error: fail)


class FailoverKind(StrEnum):
    """How a pool served a request (the `failover` label of `gatewatch_pool_requests_total`): normally, or while
    it was failing over. When several apply, the first of panic, priority, retry counts."""

    NONE = "none"  # the primary priority level, healthy enough, first attempt's instance or a retry to it
    RETRY = "retry"  # a retry went to another instance than the one that failed
    PRIORITY = "priority"  # served from a failover priority level (the primary one is not healthy enough)
    PANIC = "panic"  # the pool balanced across unhealthy instances too


class StoreState(StrEnum):
    UP = "up"
    DOWN = "down"


# OAuth2 / OIDC identity providers (issue 16): which endpoint of a provider, and why a call to it failed
class AuthEndpoint(StrEnum):
    """The `endpoint` label of `gatewatch_auth_provider_up` and `gatewatch.auth.endpoint` on its events."""

    DISCOVERY = "discovery"  # {issuer}/.well-known/openid-configuration (OpenID Connect Discovery 1.0 §4)
    JWKS = "jwks"  # the key set (configured `jwks.url`, or the discovery document's `jwks_uri`)
    INTROSPECTION = "introspection"  # RFC 7662 token introspection


class ProviderFailure(StrEnum):
    """Why a call to an identity provider's endpoint failed (`gatewatch.decision.reason` of its down event)."""

    TIMEOUT = "timeout"  # no complete answer within the policy's timeout_s
    CONNECT_ERROR = "connect_error"  # refused, unreachable, DNS
    TLS_ERROR = "tls_error"  # the handshake failed (`gatewatch.tls.failure` says why)
    BAD_RESPONSE = "bad_response"  # the connection broke or the answer was not valid HTTP
    HTTP_STATUS = "http_status"  # an answer other than 200 (redirects are not followed)
    TOO_LARGE = "too_large"  # a body over the size cap
    NOT_JSON = "not_json"  # not a JSON object
    INVALID = "invalid"  # JSON, but not what the specification requires (no keys, `active` not a boolean, ...)
    ISSUER_MISMATCH = "issuer_mismatch"  # the discovery document names another issuer (OIDC Discovery §4.3)


class Event(StrEnum):
    """`event_name` of decision-log records (OTLP log records)."""

    DECISION_ROUTE = "gatewatch.decision.route"
    DECISION_POLICY = "gatewatch.decision.policy"
    DECISION_PICK = "gatewatch.decision.pick"
    DECISION_RETRY = "gatewatch.decision.retry"
    DECISION_FAILOVER = "gatewatch.decision.failover"
    DECISION_CACHE = "gatewatch.decision.cache"  # the response cache's outcome (issue 19)
    DECISION_SPLIT = "gatewatch.decision.split"  # a weighted split's side (issue 19)
    DECISION_MIRROR = "gatewatch.decision.mirror"  # a request copied to a shadow upstream, or skipped (issue 19)
    DECISION_AGGREGATE = "gatewatch.decision.aggregate"  # an aggregate route's composition (issue 19)
    HEALTH_TRANSITION = "gatewatch.health.transition"
    OUTLIER_EJECTION = "gatewatch.outlier.ejection"
    CIRCUIT_TRANSITION = "gatewatch.circuit.transition"
    CONFIG_RELOAD = "gatewatch.config.reload"
    DRAIN = "gatewatch.drain"  # SIGTERM: one record per `DrainStep` (docs/operations.md "Rolling restarts")
    RATELIMIT_STORE = "gatewatch.ratelimit.store.transition"  # a rate-limit store went down or came back
    # OAuth2 / OIDC (issue 16)
    AUTH_PROVIDER = "gatewatch.auth.provider.transition"  # an identity provider's endpoint went down or came back
    # Service discovery (issue 20)
    DISCOVERY_CHANGE = "gatewatch.discovery.change"  # a pool's members changed: added/removed/updated, and why
    DISCOVERY_FAILURE = "gatewatch.discovery.failure"  # a refresh failed (last good set kept), or recovered


DECISION_EVENTS: dict[DecisionKind, Event] = {
    DecisionKind.ROUTE: Event.DECISION_ROUTE,
    DecisionKind.POLICY: Event.DECISION_POLICY,
    DecisionKind.PICK: Event.DECISION_PICK,
    DecisionKind.RETRY: Event.DECISION_RETRY,
    DecisionKind.FAILOVER: Event.DECISION_FAILOVER,
    DecisionKind.CACHE: Event.DECISION_CACHE,
    DecisionKind.SPLIT: Event.DECISION_SPLIT,
    DecisionKind.MIRROR: Event.DECISION_MIRROR,
    DecisionKind.AGGREGATE: Event.DECISION_AGGREGATE,
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
    # balancer
    POOL = "gatewatch.pool"
    PRIORITY = "gatewatch.lb.priority"  # the priority level the pick was made in
    LB_PANIC = "gatewatch.lb.panic"  # true when the pick ignored health because too few were healthy
    LB_AFFINITY = "gatewatch.lb.affinity"  # "cookie" when the session-affinity cookie decided the pick
    LB_HASH_KEY_SOURCE = "gatewatch.lb.hash_key"  # e.g. header:x-user, never the key's value
    RETRY_BUDGET_REMAINING = "gatewatch.retry.budget_remaining"
    RETRY_ATTEMPT = "gatewatch.retry.attempt"
    RETRY_FAILURE = "gatewatch.retry.failure"  # connect_failure | reset | timeout | status
    # service discovery (issue 20)
    LB_SOURCES = "gatewatch.lb.sources"  # where a discovered pool's candidates came from, e.g. "dns=3"
    DISCOVERY_SOURCE = "gatewatch.discovery.source"  # DiscoverySource
    DISCOVERY_DETAIL = "gatewatch.discovery.detail"  # e.g. "dns A api.internal ttl 30", "file /x.yaml changed"
    DISCOVERY_ADDED = "gatewatch.discovery.added"  # instance ids
    DISCOVERY_REMOVED = "gatewatch.discovery.removed"
    DISCOVERY_UPDATED = "gatewatch.discovery.updated"
    DISCOVERY_INSTANCES = "gatewatch.discovery.instances"  # the pool's size after the change
    DISCOVERY_RESULT = "gatewatch.discovery.result"  # DiscoveryResult
    DISCOVERY_FAILURES = "gatewatch.discovery.consecutive_failures"
    FAILOVER_FROM = "gatewatch.failover.from"  # instance id or priority level
    FAILOVER_TO = "gatewatch.failover.to"
    HEALTH_FROM = "gatewatch.health.from"
    HEALTH_TO = "gatewatch.health.to"
    HEALTH_CHECK = "gatewatch.health.check"  # active|passive
    PROBE_RESULT = "gatewatch.health.probe_result"  # e.g. status 503, connect_refused, timeout
    EJECTION_COUNT = "gatewatch.outlier.ejection_count"
    EJECTION_DURATION_S = "gatewatch.outlier.ejection_duration_s"
    EJECTION_TRACE_IDS = "gatewatch.outlier.trace_ids"  # the failing requests that caused the ejection
    # policies
    POLICY_NAME = "gatewatch.policy.name"
    POLICY_TYPE = "gatewatch.policy.type"
    POLICY_VERDICT = "gatewatch.policy.verdict"
    POLICY_REASON = "gatewatch.policy.reason"
    POLICY_SHADOW = "gatewatch.policy.shadow"
    CONSUMER = "gatewatch.consumer"
    RATELIMIT_LIMIT = "gatewatch.ratelimit.limit"
    RATELIMIT_REMAINING = "gatewatch.ratelimit.remaining"
    CIRCUIT_FROM = "gatewatch.circuit.from"
    CIRCUIT_TO = "gatewatch.circuit.to"
    # which configuration a request ran under: a short hash of the active config (and, on events, its load time)
    CONFIG_VERSION = "gatewatch.config.version"
    CONFIG_LOADED_AT = "gatewatch.config.loaded_at"  # RFC 3339, UTC
    CONFIG_PATH = "gatewatch.config.path"  # the file a reload read
    DRAIN_STEP = "gatewatch.drain.step"  # DrainStep
    DRAIN_CONNECTIONS = "gatewatch.drain.connections"  # client connections still open when the step was reached
    CONFIG_PROBLEMS = "gatewatch.config.problems"  # why a reload was refused (field.path: message)
    CONFIG_PREVIOUS_VERSION = "gatewatch.config.previous_version"  # the version a reload replaced
    ROUTE_FAILED_CONDITION = "gatewatch.route.failed_condition"  # no route: the nearest route's failed condition
    LINK = "gatewatch.link"  # on a span link: why it is a link (untrusted_inbound)
    # where the time went (seconds), on each attempt's CLIENT span; a phase that did not happen is absent
    TIMING_BACKOFF = "gatewatch.timing.backoff_s"  # the retry backoff slept before this attempt
    TIMING_POOL_WAIT = "gatewatch.timing.pool_wait_s"  # waiting for a free connection to the instance
    TIMING_CONNECT = "gatewatch.timing.connect_s"  # TCP connect (a new connection; absent when one was reused)
    TIMING_TLS = "gatewatch.timing.tls_s"  # TLS handshake of a new connection
    TLS_FAILURE = "gatewatch.tls.failure"  # why the TLS handshake with the upstream failed (`TlsFailure`)
    TLS_PROTOCOL_VERSION = "tls.protocol.version"  # OTel semconv (tls.*): "1.2" | "1.3", of the attempt's connection
    TLS_CIPHER = "tls.cipher"
    # the client's TLS with a listener (OTel semconv tls.*), on the SERVER span; the client certificate's only when
    # it was verified against the listener's client_ca_file
    TLS_SERVER_NAME = "tls.client.server_name"  # the SNI the client sent
    TLS_CLIENT_SUBJECT = "tls.client.subject"  # RFC 4514 distinguished name
    TLS_CLIENT_HASH = "tls.client.hash.sha256"  # of the DER certificate, upper-case hex (semconv)
    TLS_NEXT_PROTOCOL = "tls.next_protocol"  # the ALPN protocol negotiated, e.g. "http/1.1"
    # gRPC requests (issue 17; OTel RPC semconv), on the SERVER span
    RPC_SYSTEM = "rpc.system"  # "grpc"
    RPC_SERVICE = "rpc.service"  # "package.Service" from the path /package.Service/Method
    RPC_METHOD = "rpc.method"
    RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"  # from the response's grpc-status (trailers), or ours
    TIMING_REQUEST_SENT = "gatewatch.timing.request_sent_s"  # writing the request (head, and body when streamed)
    TIMING_TTFB = "gatewatch.timing.ttfb_s"  # from the request sent to the response head received
    # per policy, in the order of gatewatch.policy.summary, on the SERVER span: each evaluation's duration
    POLICY_DURATIONS = "gatewatch.policy.durations_s"
    RATELIMIT_STORE_RTT = "gatewatch.ratelimit.store_rtt_s"  # the Redis round trip of a rate-limit policy
    RATELIMIT_STORE = "gatewatch.ratelimit.store"  # a store's URL without credentials
    STORE_FROM = "gatewatch.ratelimit.store.from"  # StoreState
    STORE_TO = "gatewatch.ratelimit.store.to"
    # state-change events and the requests they touched, linked both ways: every event has an id; a request
    # served while one applies names it
    EVENT_ID = "gatewatch.event.id"
    EVENT_IDS = "gatewatch.event.ids"  # on a request: the ids of the events that affected it
    EVENT_TRACE_IDS = "gatewatch.event.trace_ids"  # on an event: the requests that caused it
    REQUEST_HEADERS_DROPPED = "gatewatch.request.headers_dropped"  # on the SERVER span: HeaderDrop values
    # OAuth2 / OIDC (issue 16): identity-provider endpoints, on their transition events
    AUTH_PROVIDER = "gatewatch.auth.provider"  # as configured: the issuer, jwks.url or introspection endpoint
    AUTH_ENDPOINT = "gatewatch.auth.endpoint"  # AuthEndpoint
    AUTH_URL = "gatewatch.auth.url"  # the URL called (a discovered jwks_uri differs from the provider)
    AUTH_PROVIDER_FROM = "gatewatch.auth.provider.from"  # StoreState
    AUTH_PROVIDER_TO = "gatewatch.auth.provider.to"
    # response caching (issue 19), on the SERVER span of a route with a cache
    CACHE_RESULT = "gatewatch.cache.result"  # CacheResult
    CACHE_REASON = "gatewatch.cache.reason"  # CacheReason
    CACHE_AGE = "gatewatch.cache.age_s"  # the Age sent with a stored response (RFC 9111 §5.1), whole seconds
    # weighted splits (issue 19), on the SERVER span of a route with `upstreams` (gatewatch.upstream: the side)
    SPLIT_UPSTREAM = "gatewatch.split.upstream"  # the side that took the request
    SPLIT_WEIGHT = "gatewatch.split.weight"  # its configured weight
    SPLIT_REASON = "gatewatch.split.reason"  # Reason split.*: weight, sticky_hash, sticky_cookie, override_*
    # request mirroring (issue 19): on the SERVER span of a request the mirror selected ...
    MIRROR_UPSTREAM = "gatewatch.mirror.upstream"  # the shadow upstream
    MIRROR_RESULT = "gatewatch.mirror.result"  # MirrorResult
    # ... and on the shadow's CLIENT span (a child of that SERVER span, gatewatch.mirror = true)
    MIRROR = "gatewatch.mirror"
    MIRROR_MATCH = "gatewatch.mirror.match"  # MirrorMatch
    MIRROR_PRIMARY_STATUS = "gatewatch.mirror.primary_status_code"  # what the client got (absent: no status)
    MIRROR_LATENCY_DELTA = "gatewatch.mirror.latency_delta_s"  # shadow duration minus primary duration
    # aggregate routes (issue 19): on each call's CLIENT span, and on the gatewatch.decision.aggregate record
    AGGREGATE_CALL = "gatewatch.aggregate.call"  # the call's name (CLIENT span)
    AGGREGATE_COMPOSE = "gatewatch.aggregate.compose"  # merge | template
    AGGREGATE_OK = "gatewatch.aggregate.ok"  # the calls whose parts are in the response
    AGGREGATE_FAILED = "gatewatch.aggregate.failed"  # "name=AggregateCall" of each failed call
    AGGREGATE_SIZES = "gatewatch.aggregate.sizes"  # "name=bytes" of each call's body
    AGGREGATE_RESPONSE_BYTES = "gatewatch.aggregate.response_bytes"  # the composed body
    # JSON body transforms (json_transform policy, issue 19), on their gatewatch.decision.policy records
    TRANSFORM_DIRECTION = "gatewatch.transform.direction"  # request | response
    TRANSFORM_CHANGES = "gatewatch.transform.changes"  # what changed: "remove:a.b", "rename:a>b", "add:c"
    TRANSFORM_BYTES_BEFORE = "gatewatch.transform.bytes_before"
    TRANSFORM_BYTES_AFTER = "gatewatch.transform.bytes_after"
    TRANSFORM_SKIPPED = "gatewatch.transform.skipped"  # why a body was left as it was: not_json, encoded, no_body
    # L4 TCP pass-through (mode: tcp listeners, docs/tcp.md): a connection's SERVER span and its CLIENT spans
    NETWORK_TRANSPORT = "network.transport"  # "tcp"
    NETWORK_TYPE = "network.type"  # ipv4 | ipv6
    CLIENT_PORT = "client.port"
    LISTENER = "gatewatch.listener"
    TCP_RECEIVED_BYTES = "gatewatch.tcp.received_bytes"  # from the client (relayed to the instance)
    TCP_SENT_BYTES = "gatewatch.tcp.sent_bytes"  # to the client (relayed from the instance)
    TCP_CLOSED_BY = "gatewatch.tcp.closed_by"  # TcpClosedBy: who ended the connection first
    TCP_PROXY_PROTOCOL = "gatewatch.tcp.proxy_protocol"  # v1 | v2: the PROXY header sent to the instance
    # WebSocket sessions (issue 17): the session span, an INTERNAL child of the handshake's SERVER span
    WEBSOCKET_END = "gatewatch.websocket.end"  # WebSocketEnd: why the session ended
    WEBSOCKET_CLOSED_BY = "gatewatch.websocket.closed_by"  # client | upstream | gatewatch
    WEBSOCKET_CLOSE_CODE = "gatewatch.websocket.close_code"  # the first close frame's code (RFC 6455 §7.4)
    WEBSOCKET_CLIENT_BYTES = "gatewatch.websocket.client_bytes"  # bytes relayed client -> upstream
    WEBSOCKET_UPSTREAM_BYTES = "gatewatch.websocket.upstream_bytes"  # bytes relayed upstream -> client
    WEBSOCKET_CLIENT_MESSAGES = "gatewatch.websocket.client_messages"  # complete data messages client -> upstream
    WEBSOCKET_UPSTREAM_MESSAGES = "gatewatch.websocket.upstream_messages"  # upstream -> client


class Reason(StrEnum):
    """Closed vocabulary of decision reasons."""

    ROUTE_MATCHED = "route.matched"
    ROUTE_NO_MATCH = "route.no_match"
    PICK_ROUND_ROBIN = "pick.round_robin"
    PICK_WEIGHTED = "pick.weighted_round_robin"
    PICK_RANDOM = "pick.random"
    PICK_LEAST_REQUEST = "pick.least_request"
    PICK_LEAST_CONNECTIONS = "pick.least_connections"
    PICK_RING_HASH = "pick.ring_hash"
    PICK_MAGLEV = "pick.maglev"
    PICK_AFFINITY = "pick.affinity"  # the session-affinity cookie named a usable instance
    PICK_NO_CANDIDATES = "pick.no_candidates"
    PICK_OVERFLOW = "pick.overflow"  # candidates existed but all were at their limits
    # retry decisions (taken or refused)
    RETRY_CONNECT_FAILURE = "retry.connect_failure"  # nothing reached the upstream: any method may be retried
    RETRY_RESET = "retry.reset"  # idempotent request, no response
    RETRY_TIMEOUT = "retry.timeout"  # idempotent request, per-try timeout
    RETRY_STATUS = "retry.status"  # idempotent request, retryable status
    RETRY_REFUSED_BUDGET = "retry.budget_exhausted"
    RETRY_REFUSED_ATTEMPTS = "retry.attempts_exhausted"
    RETRY_REFUSED_DEADLINE = "retry.deadline_exceeded"
    RETRY_REFUSED_NOT_IDEMPOTENT = "retry.not_idempotent"  # bytes may have reached the upstream
    RETRY_REFUSED_BODY_SENT = "retry.body_not_replayable"  # the request body was streamed and is gone
    RETRY_REFUSED_NOT_CONFIGURED = "retry.not_configured"  # this kind of failure is not in the route's retry_on
    # failover decisions
    FAILOVER_PRIORITY_DEGRADED = "failover.priority_degraded"  # traffic spills to the next priority
    FAILOVER_PRIORITY_RECOVERED = "failover.priority_recovered"
    FAILOVER_RETRY_OTHER_INSTANCE = "failover.retry_other_instance"  # a retry went to a different instance
    FAILOVER_PANIC = "failover.panic"  # too few healthy instances: balancing across all
    # health and outlier state changes
    OUTLIER_CONSECUTIVE_5XX = "outlier.consecutive_5xx"
    OUTLIER_CONSECUTIVE_GATEWAY_ERRORS = "outlier.consecutive_gateway_errors"
    OUTLIER_EJECTION_EXPIRED = "outlier.ejection_expired"
    OUTLIER_ACTIVE_RECOVERY = "outlier.active_check_recovered"  # ejected, then the active check saw it come back
    OUTLIER_MAX_EJECTION_PERCENT = "outlier.max_ejection_percent"  # an ejection was due but the cap forbade it
    # weighted splits (issue 19): why a side took the request
    SPLIT_WEIGHT = "split.weight"  # by weight (no sticky key, or a new client given its cookie now)
    SPLIT_STICKY_HASH = "split.sticky_hash"  # the request's sticky key hashed into the weights (consistent)
    SPLIT_STICKY_COOKIE = "split.sticky_cookie"  # the split cookie Gatewatch set earlier, hashed the same way
    SPLIT_OVERRIDE_HEADER = "split.override_header"  # a tester's override header named the side
    SPLIT_OVERRIDE_COOKIE = "split.override_cookie"  # a tester's override cookie named the side
    # aggregate routes (issue 19): how the composition went
    AGGREGATE_ALL_OK = "aggregate.all_ok"  # every call's part is in the response
    AGGREGATE_PARTS_OMITTED = "aggregate.parts_omitted"  # on_error: omit, and some calls failed
    AGGREGATE_CALL_FAILED = "aggregate.call_failed"  # a call failed the request (on_error: fail, or required)
    MIRROR_PERCENT = "mirror.percent"  # the route's mirror.percent selected the request (the result: sent/skipped)


class Exclusion(StrEnum):
    """Why the balancer skipped an instance (`gatewatch.lb.excluded` is a list of `instance=reason`)."""

    UNHEALTHY = "unhealthy"  # active health checks say down
    EJECTED = "ejected"  # outlier detection ejected it
    DRAINING = "draining"  # config or admin API: no new requests
    TRIED = "tried"  # an earlier attempt of this request used it
    OVER_LIMIT = "over_limit"  # at max_connections / max_pending
    INACTIVE_PRIORITY = "inactive_priority"  # healthy, but its priority level is not the one taking traffic


class Verdict(StrEnum):
    """A policy's verdict on one request."""

    ALLOW = "allow"
    DENY = "deny"
    SHADOW_DENY = "shadow_deny"  # the policy would deny, but runs in shadow mode: the request continues
    ERROR = "error"  # the policy could not decide (e.g. key store down) and its fail mode applied


class PolicyReason(StrEnum):
    """Closed vocabulary of policy-verdict reasons."""

    JWT_VALID = "jwt.valid"
    JWT_MISSING = "jwt.missing"
    JWT_MALFORMED = "jwt.malformed"
    JWT_OVERSIZED = "jwt.oversized"
    JWT_ALG_NOT_ALLOWED = "jwt.alg_not_allowed"
    JWT_FORBIDDEN_HEADER = "jwt.forbidden_header"  # jku / x5u / jwk / crit the gateway will not honour
    JWT_UNKNOWN_KID = "jwt.unknown_kid"
    JWT_BAD_SIGNATURE = "jwt.bad_signature"
    JWT_EXPIRED = "jwt.expired"
    JWT_NOT_YET_VALID = "jwt.not_yet_valid"
    JWT_BAD_ISSUER = "jwt.bad_issuer"
    JWT_BAD_AUDIENCE = "jwt.bad_audience"
    JWT_MISSING_CLAIM = "jwt.missing_claim"
    JWT_INSUFFICIENT_SCOPE = "jwt.insufficient_scope"
    JWT_KEYS_UNAVAILABLE = "jwt.keys_unavailable"
    APIKEY_VALID = "apikey.valid"
    APIKEY_MISSING = "apikey.missing"
    APIKEY_INVALID = "apikey.invalid"
    CLIENT_CERT_VALID = "client_cert.valid"  # a verified client certificate an allow entry matched
    CLIENT_CERT_MISSING = "client_cert.missing"  # no verified client certificate on this request (401)
    CLIENT_CERT_NOT_ALLOWED = "client_cert.not_allowed"  # verified, but no allow entry matches (403)
    RATELIMIT_WITHIN = "ratelimit.within_limit"
    RATELIMIT_EXCEEDED = "ratelimit.exceeded"
    RATELIMIT_STORE_UNAVAILABLE = "ratelimit.store_unavailable"
    IP_ALLOWED = "ip.allowed"
    IP_DENIED = "ip.denied"
    CORS_ALLOWED = "cors.allowed"
    CORS_PREFLIGHT = "cors.preflight"
    CORS_ORIGIN_DENIED = "cors.origin_denied"
    SIZE_WITHIN = "size.within_limit"
    SIZE_TOO_LARGE = "size.too_large"
    SCHEMA_VALID = "schema.valid"
    SCHEMA_INVALID = "schema.invalid"
    SCHEMA_NOT_JSON = "schema.not_json"
    TRANSFORM_APPLIED = "transform.applied"
    CIRCUIT_CLOSED = "circuit.closed"
    CIRCUIT_OPEN = "circuit.open"
    CIRCUIT_HALF_OPEN_PROBE = "circuit.half_open_probe"
    CORS_NO_ORIGIN = "cors.no_origin"  # not a cross-origin request: nothing to decide
    SCHEMA_SKIPPED = "schema.skipped"  # a method the schema policy does not check
    REWRITE_APPLIED = "rewrite.applied"
    REWRITE_NO_MATCH = "rewrite.no_match"
    REWRITE_INVALID = "rewrite.invalid_result"  # the rewritten path is not a valid path: the original is kept
    CIRCUIT_HALF_OPEN_REJECTED = "circuit.half_open_rejected"  # half-open and every probe slot is taken
    BODY_STALLED = "body.stalled"  # the body stalled while a policy was reading it (408 client_timeout)
    # OAuth2 token introspection, RFC 7662 (issue 16)
    INTROSPECTION_ACTIVE = "introspection.active"
    INTROSPECTION_MISSING = "introspection.missing"  # no bearer token
    INTROSPECTION_OVERSIZED = "introspection.oversized"
    INTROSPECTION_INACTIVE = "introspection.inactive"  # the authorization server answered `active: false`
    INTROSPECTION_MISSING_CLAIM = "introspection.missing_claim"
    INTROSPECTION_INSUFFICIENT_SCOPE = "introspection.insufficient_scope"
    INTROSPECTION_UNAVAILABLE = "introspection.unavailable"  # endpoint down, slow or garbled: fail_mode applies
    # JSON body transforms (json_transform, issue 19); a request over max_bytes is size.too_large (413)
    JSON_REQUEST_APPLIED = "json_transform.request_applied"
    JSON_REQUEST_SKIPPED = "json_transform.request_skipped"  # no body, not JSON, or no request changes configured
    JSON_REQUEST_INVALID = "json_transform.request_invalid_json"  # declared JSON, is not: 400
    JSON_RESPONSE_APPLIED = "json_transform.response_applied"
    JSON_RESPONSE_SKIPPED = "json_transform.response_skipped"  # not JSON, encoded, no body: relayed as it is
    JSON_RESPONSE_TOO_LARGE = "json_transform.response_too_large"  # over max_bytes: relayed as it is
    JSON_RESPONSE_INVALID = "json_transform.response_invalid_json"  # declared JSON, is not: relayed as it is


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
    EJECTIONS_ACTIVE = "gatewatch_ejected_endpoints"  # gauge, by pool
    RETRY_BUDGET_EXHAUSTED = "gatewatch_retry_budget_exhausted"  # counter -> ..._total, by route and upstream
    PANIC_MODE = "gatewatch_pool_panic_mode"  # gauge 0/1, by pool
    ACTIVE_PRIORITY = "gatewatch_pool_active_priority"  # gauge, by pool: the priority level taking traffic
    SLOW_START_WEIGHT = "gatewatch_slow_start_weight_ratio"  # gauge 0..1, by pool and instance
    HEALTH_PROBES = "gatewatch_health_probes"  # counter -> ..._total, by pool, instance and result
    HEALTH_TRANSITIONS = "gatewatch_health_transitions"  # counter -> ..._total, by pool, instance and state
    INSTANCE_REQUESTS = "gatewatch_instance_requests"  # counter -> ..._total, by pool, instance and outcome
    POLICY_VERDICTS = "gatewatch_policy_verdicts"  # counter -> ..._total, by route, policy, type, verdict, reason
    RATE_LIMITED_CONSUMERS = "gatewatch_ratelimit_consumer_limited"  # counter -> ..._total, consumer (capped)
    CIRCUIT_STATE = "gatewatch_circuit_state"  # gauge 0/1 per state, by route and state
    CONFIG_RELOADS = "gatewatch_config_reloads"  # counter -> ..._total, by result
    DRAIN_STEPS = "gatewatch_drain_steps"  # counter -> ..._total, by step (DrainStep): SIGTERM drains reached it
    DRAIN_CONNECTIONS_CLOSED = "gatewatch_drain_connections_closed"  # counter -> ..._total, listener, DrainClose
    RATELIMIT_STORE_UP = "gatewatch_ratelimit_store_up"  # gauge 1/0, by store (its URL without credentials)
    POOL_REQUESTS = "gatewatch_pool_requests"  # counter -> ..._total, by pool and failover (FailoverKind)
    # Process metrics of every Gatewatch process (each worker is its own scrape target): worker health.
    PROCESS_START_TIME = "process_start_time_seconds"  # gauge: changes when a worker is replaced
    PROCESS_CPU = "process_cpu_seconds"  # counter -> process_cpu_seconds_total
    PROCESS_RSS = "process_resident_memory_bytes"  # gauge
    TELEMETRY_DROPPED = "gatewatch_telemetry_dropped"  # counter -> gatewatch_telemetry_dropped_total
    TELEMETRY_EXPORTED = "gatewatch_telemetry_exported"  # counter -> gatewatch_telemetry_exported_total
    TELEMETRY_QUEUE = "gatewatch_telemetry_queue_items"  # gauge
    BUILD_INFO = "gatewatch_build"  # info -> gatewatch_build_info
    ADMIN_AUTH_FAILURES = "gatewatch_admin_auth_failures"  # counter -> ..._total, by reason (AdminAuthFailure)
    CONFIG_INFO = "gatewatch_config"  # info -> gatewatch_config_info{version}
    CONFIG_LOADED = "gatewatch_config_last_reload_success_timestamp_seconds"  # gauge: when the config was loaded
    REQUEST_HEADERS_DROPPED = "gatewatch_request_headers_dropped"  # counter -> ..._total, by layer and HeaderDrop
    # TLS termination, per listener
    TLS_HANDSHAKES = "gatewatch_tls_handshakes"  # counter: completed, by listener and protocol version
    TLS_HANDSHAKE_FAILURES = "gatewatch_tls_handshake_failures"  # counter: by listener and `TlsHandshakeFailure`
    TLS_CERT_EXPIRY = "gatewatch_tls_certificate_expiry_timestamp_seconds"  # gauge: notAfter, per served cert
    # OAuth2 / OIDC (issue 16)
    AUTH_PROVIDER_UP = "gatewatch_auth_provider_up"  # gauge 1/0, by provider (as configured) and endpoint
    # Service discovery (issue 20)
    DISCOVERY_REFRESHES = "gatewatch_discovery_refreshes"  # counter -> ..._total, by pool, source, DiscoveryResult
    # response caching (issue 19), per route with a cache
    CACHE_REQUESTS = "gatewatch_cache_requests"  # counter -> ..._total, by route, result (CacheResult) and reason
    CACHE_ENTRIES = "gatewatch_cache_entries"  # gauge: stored responses, by route
    CACHE_BYTES = "gatewatch_cache_bytes"  # gauge: bytes held (bodies and headers), by route
    CACHE_EVICTIONS = "gatewatch_cache_evictions"  # counter -> ..._total, by route and reason (CacheEviction)
    # weighted splits and mirroring (issue 19), per route with `upstreams` / `mirror`
    SPLIT_REQUESTS = "gatewatch_split_requests"  # counter -> ..._total, by route, upstream (side) and reason (split.*)
    MIRROR_REQUESTS = "gatewatch_mirror_requests"  # counter -> ..._total, by route, upstream (shadow), result
    MIRROR_COMPARISONS = "gatewatch_mirror_comparisons"  # counter -> ..._total, by route, upstream, match
    MIRROR_LATENCY_DELTA = "gatewatch_mirror_latency_delta_seconds"  # histogram: shadow minus primary duration
    # aggregate routes (issue 19)
    AGGREGATE_CALLS = "gatewatch_aggregate_calls"  # counter -> ..._total, by route, call and result (AggregateCall)
    # L4 TCP pass-through (mode: tcp listeners, docs/tcp.md), by listener, pool and instance
    TCP_CONNECTIONS = "gatewatch_tcp_connections"  # counter -> ..._total, + outcome (TcpOutcome); instance "" if none
    TCP_ACTIVE = "gatewatch_tcp_active_connections"  # gauge: relaying now
    TCP_RECEIVED = "gatewatch_tcp_received_bytes"  # counter -> ..._total: from clients, relayed to the instance
    TCP_SENT = "gatewatch_tcp_sent_bytes"  # counter -> ..._total: from the instance, relayed to clients
    TCP_CONNECT_DURATION = "gatewatch_tcp_connect_duration_seconds"  # histogram, by pool, instance, result
    # WebSocket sessions (issue 17)
    WEBSOCKET_SESSIONS = "gatewatch_websocket_sessions"  # gauge: open sessions, by route, upstream and instance
    WEBSOCKET_SESSIONS_ENDED = "gatewatch_websocket_sessions_ended"  # counter -> ..._total, route, WebSocketEnd
    # HTTP/2 downstream (issue 17): counter -> ..._total, by listener, `H2Event` and `H2Reason`
    HTTP2_EVENTS = "gatewatch_http2_events"


class H2Event(StrEnum):
    """What happened on a listener's HTTP/2 connection (`event` of `gatewatch_http2_events_total`)."""

    CONNECTION = "connection"  # reason opened
    STREAM = "stream"  # reason opened (handed to the engine) or refused (answered by the listener: 431, 400, 501)
    RESET = "reset"  # a stream reset: by the client, refused by us (limits), or malformed (PROTOCOL_ERROR)
    GOAWAY = "goaway"  # the connection ended by us: drain, or a defence / protocol error


class H2Reason(StrEnum):
    """`reason` of `gatewatch_http2_events_total` (h2_listener)."""

    OPENED = "opened"
    REFUSED = "refused"
    CLIENT_RESET = "client_reset"  # RST_STREAM from the client
    REFUSED_STREAM = "refused_stream"  # over max_concurrent_streams or max_streams_per_s (RFC 9113 §5.1.2)
    PROTOCOL_ERROR = "protocol_error"  # a malformed request (§8.1.1) or connection error
    RAPID_RESET = "rapid_reset"  # CVE-2023-44487: too many resets in the window -> GOAWAY ENHANCE_YOUR_CALM
    HEADER_LIST_TOO_LARGE = "header_list_too_large"  # an HPACK bomb -> GOAWAY ENHANCE_YOUR_CALM
    FLOW_CONTROL_ERROR = "flow_control_error"
    FRAME_SIZE_ERROR = "frame_size_error"
    DRAIN = "drain"  # GOAWAY NO_ERROR on drain or idle


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
    STEP = "step"  # DrainStep
    PRIORITY = "priority"
    POLICY = "gatewatch_policy"
    POLICY_TYPE = "gatewatch_policy_type"
    VERDICT = "verdict"
    CONSUMER = "gatewatch_consumer"  # capped: at most CONSUMER_LABEL_CAP distinct values, then OVERFLOW_LABEL
    STORE = "store"
    FAILOVER = "failover"
    VERSION = "version"  # of gatewatch_build_info and gatewatch_config_info
    COMPILED = "compiled"  # of gatewatch_build_info: "true" when every hot module runs compiled (docs/compiled.md)
    PYTHON = "python"  # of gatewatch_build_info: the interpreter, e.g. "CPython 3.11.2"
    # semantic-convention attributes as labels of the HTTP duration histograms
    HTTP_ROUTE = "http_route"
    SCHEME = "url_scheme"
    ERROR_TYPE = "error_type"
    SERVER_ADDRESS = "server_address"
    SERVER_PORT = "server_port"
    LISTENER = "gatewatch_listener"
    TLS_VERSION = "tls_protocol_version"
    CERTIFICATE = "certificate"  # a served certificate: its subject's CN, else its first DNS name
    SERIAL = "serial"  # the certificate's serial number, hex (two certificates for one name during a rotation)
    # OAuth2 / OIDC (issue 16)
    PROVIDER = "provider"  # an identity provider as configured: issuer, jwks.url or introspection endpoint
    ENDPOINT = "endpoint"  # AuthEndpoint
    SOURCE = "source"  # DiscoverySource (service discovery, issue 20)
    MATCH = "match"  # MirrorMatch, of gatewatch_mirror_comparisons_total
    CALL = "call"  # an aggregate route's call name (config), of gatewatch_aggregate_calls_total
    EVENT = "event"  # H2Event, of gatewatch_http2_events_total


class DiscoverySource(StrEnum):
    """Where a pool's instances come from (`source` of a pool and of each instance in the admin `/upstreams`)."""

    STATIC = "static"  # the config's `instances`
    DNS = "dns"
    FILE = "file"
    K8S = "k8s"


class DiscoveryResult(StrEnum):
    """The `result` label of `gatewatch_discovery_refreshes_total`: `ok` (an answer, applied whether it changed
    anything or not), else why the last good set was kept."""

    OK = "ok"
    NXDOMAIN = "nxdomain"  # DNS: the name does not exist (RFC 1035 RCODE 3)
    SERVFAIL = "servfail"  # DNS: SERVFAIL, REFUSED or another error RCODE from every nameserver
    TIMEOUT = "timeout"  # no answer in time
    EMPTY = "empty"  # DNS: the name exists but has no record of the type (NODATA), or only unusable ones
    INVALID = "invalid"  # a file with errors; an API answer that is not what the protocol says
    EXPIRED = "expired"  # k8s: the watch's resourceVersion is too old (410 Gone): relisted
    ERROR = "error"  # cannot connect, an HTTP error status, an unreadable file


class EndpointState(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"
    SLOW_START = "slow_start"  # healthy, ramping up its effective weight


class ProbeResult(StrEnum):
    """The `result` label of `gatewatch_health_probes_total`."""

    PASS = "pass"
    FAIL = "fail"


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CONSUMER_LABEL_CAP = 100
OVERFLOW_LABEL = "_overflow"


class TelemetrySignal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"


class DropReason(StrEnum):
    QUEUE_FULL = "queue_full"
    EXPORT_FAILED = "export_failed"
    SHUTDOWN = "shutdown"


class AdminAuthFailure(StrEnum):
    """Why the admin listener refused a request for its bearer token (`reason` of
    `gatewatch_admin_auth_failures_total`; RFC 6750 §3.1)."""

    MISSING = "missing"  # no Authorization: Bearer credentials (401)
    MALFORMED = "malformed"  # Bearer credentials that are not one b64token, or several Authorization headers (400)
    INVALID = "invalid"  # a well-formed token that is not the configured one (401 invalid_token)
    CROSS_SITE = "cross_site"  # a browser request from another origin (403): CSRF / DNS rebinding


class DrainStep(StrEnum):
    """The steps of a SIGTERM drain, in order (`step` of `gatewatch_drain_steps_total`, `gatewatch.drain.step`)."""

    STARTED = "started"  # /readyz answers 503; traffic is still served for drain.readiness_delay_s
    STOPPED_ACCEPTING = "stopped_accepting"  # the listening sockets are closed; responses say Connection: close
    DRAINED = "drained"  # every client connection ended within drain.grace_s
    GRACE_EXPIRED = "grace_expired"  # drain.grace_s ran out: the connections left were cut


class DrainClose(StrEnum):
    """How a client connection ended during a drain (`reason` of `gatewatch_drain_connections_closed_total`)."""

    AFTER_RESPONSE = "after_response"  # its response said Connection: close (or the client closed it)
    IDLE = "idle"  # closed by the listener after drain.idle_close_s without a request
    DEADLINE = "deadline"  # still busy (or with a request unread) when drain.grace_s ran out: cut


class WebSocketEnd(StrEnum):
    """Why a WebSocket session ended (`gatewatch.websocket.end`, `reason` of
    `gatewatch_websocket_sessions_ended_total`; docs/websocket.md)."""

    CLIENT_CLOSE = "client_close"  # the client sent a close frame first
    UPSTREAM_CLOSE = "upstream_close"  # the upstream sent a close frame first
    CLIENT_DISCONNECT = "client_disconnect"  # the client's TCP connection ended without a close handshake
    UPSTREAM_DISCONNECT = "upstream_disconnect"  # the upstream's TCP connection ended without one
    IDLE_TIMEOUT = "idle_timeout"  # no frame either way for websocket.idle_timeout_s: 1001 to both
    MAX_DURATION = "max_duration"  # websocket.max_duration_s reached: 1001 to both
    DRAIN = "drain"  # the listener is draining (reload, shutdown): 1001 to both
    INSTANCE_GONE = "instance_gone"  # the instance was ejected, became unhealthy or left its pool: 1001 to both
    PROTOCOL_ERROR = "protocol_error"  # a frame broke RFC 6455 §5 (masking, reserved opcode, control frame): 1002
    MESSAGE_TOO_BIG = "message_too_big"  # a message over websocket.max_message_bytes: 1009


class TcpOutcome(StrEnum):
    """How one TCP pass-through connection ended (`gatewatch.outcome` of its SERVER span, `outcome` of
    `gatewatch_tcp_connections_total`). The values shared with `Outcome` mean the same thing."""

    PROXIED = "proxied"  # relayed until both sides closed (FIN)
    CLIENT_ABORT = "client_abort"  # the client reset the connection (the instance's side was reset too)
    UPSTREAM_ERROR = "upstream_error"  # the instance reset the connection after it was made (the client's was reset)
    UPSTREAM_CONNECT_ERROR = "upstream_connect_error"  # every connect attempt failed (refused, unreachable)
    UPSTREAM_TIMEOUT = "upstream_timeout"  # the last connect attempt timed out (connect_timeout_s)
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"  # the pool had no instance to pick
    UPSTREAM_OVERFLOW = "upstream_overflow"  # every candidate is at its connection limit
    IDLE_TIMEOUT = "idle_timeout"  # no byte either way for idle_timeout_s: both sides closed
    CONNECTION_LIMIT = "connection_limit"  # over the listener's max_connections: accepted and reset at once
    DRAIN_CUT = "drain_cut"  # still open when a drain's grace ran out: half-closed, then cut


class TcpClosedBy(StrEnum):
    """Who ended a TCP pass-through connection first (`gatewatch.tcp.closed_by`)."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    PROXY = "proxy"  # Gatewatch: a timeout, a limit, a drain, a failed connect


# Connect durations (seconds): loopback and LAN connects take well under a millisecond.
CONNECT_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

# OTel semconv's recommended buckets for http.*.request.duration (seconds).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)

# gatewatch_mirror_latency_delta_seconds: shadow minus primary duration, either sign (seconds).
MIRROR_DELTA_BUCKETS_S: tuple[float, ...] = (
    -2.5, -1.0, -0.5, -0.25, -0.1, -0.05, -0.025, -0.01, 0.0, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# The HTTP methods recorded as themselves (RFC 9110's, PATCH and QUERY); anything else is "_OTHER", its span
# named "HTTP", with the method in http.request.method_original (semconv HTTP spans). Configurable:
# telemetry.known_methods, OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS.
DEFAULT_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                                   "QUERY"})
REDACTED = "REDACTED"  # what a redacted query-parameter value becomes in url.query (semconv's token)

SCOPE_NAME = "gatewatch"

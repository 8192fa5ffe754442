"""What Gatewatch answers itself, and which outcome an upstream failure is.

- `FAILURE_OUTCOME`: an attempt's `ErrorType` → the request's `Outcome` when nothing is left to try.
- `CONNECT_STEP`: a connect failure's `ErrorType` → the message of its answer (DNS, refused, unreachable, timeout).
- `error_body(outcome, status, request_id, layer, message)`: the small JSON body of a locally generated answer,
  naming the outcome, the request id and the layer that answered, so a client can quote what an SRE needs.
"""

from __future__ import annotations

import json

from gatewatch.telemetry.names import ErrorType, Outcome

FAILURE_OUTCOME = {
    ErrorType.DNS_ERROR: Outcome.UPSTREAM_CONNECT_ERROR,
    ErrorType.CONNECT_REFUSED: Outcome.UPSTREAM_CONNECT_ERROR,
    ErrorType.CONNECT_ERROR: Outcome.UPSTREAM_CONNECT_ERROR,
    ErrorType.UPSTREAM_TLS_ERROR: Outcome.UPSTREAM_TLS_ERROR,
    ErrorType.CONNECT_TIMEOUT: Outcome.UPSTREAM_TIMEOUT,
    ErrorType.RESPONSE_TIMEOUT: Outcome.UPSTREAM_TIMEOUT,
    ErrorType.READ_TIMEOUT: Outcome.UPSTREAM_TIMEOUT,
    ErrorType.UPSTREAM_RESET: Outcome.UPSTREAM_ERROR,
    ErrorType.PROTOCOL_ERROR: Outcome.UPSTREAM_ERROR,
}

MESSAGES = {
    Outcome.NO_ROUTE: "no route matches this request",
    Outcome.BAD_REQUEST: "the request is malformed (bad framing, oversize head or an invalid path)",
    Outcome.CLIENT_TIMEOUT: "the request body stalled longer than the route's idle timeout",
    Outcome.NO_HEALTHY_UPSTREAM: "no healthy instance is available for this route",
    Outcome.UPSTREAM_CONNECT_ERROR: "could not connect to the upstream",
    Outcome.UPSTREAM_TLS_ERROR: "the TLS handshake with the upstream failed",
    Outcome.UPSTREAM_TIMEOUT: "the upstream did not answer in time",
    Outcome.UPSTREAM_ERROR: "the upstream failed before sending a complete response",
    Outcome.DENIED_AUTH: "authentication failed or is missing",
    Outcome.DENIED_POLICY: "an access policy refused this request",
    Outcome.RATE_LIMITED: "rate limit exceeded",
    Outcome.PAYLOAD_TOO_LARGE: "the request body exceeds this route's limit",
    Outcome.INVALID_BODY: "the request body does not match this route's schema",
    Outcome.CIRCUIT_OPEN: "the upstream's circuit breaker is open",
    Outcome.UPSTREAM_OVERFLOW: "every instance is at its connection limit",
    Outcome.INTERNAL_ERROR: "internal error",
}


# Which step of the connect failed, for the client's answer (the outcome's message alone would not say). Never the
# upstream's name or address: the client may be anyone. A TLS failure says which check failed (its own message).
CONNECT_STEP = {
    ErrorType.DNS_ERROR: "could not connect to the upstream: its host name did not resolve (DNS)",
    ErrorType.CONNECT_REFUSED: "could not connect to the upstream: the connection was refused",
    ErrorType.CONNECT_ERROR: "could not connect to the upstream: the network or host is unreachable",
    ErrorType.CONNECT_TIMEOUT: "the upstream did not answer in time: no connection to it within the connect timeout",
}


def error_body(outcome: Outcome, status: int, request_id: str, layer: str, message: str | None = None) -> bytes:
    return json.dumps({"error": {"status": status, "outcome": outcome.value, "message": message or MESSAGES[outcome],
                                 "request_id": request_id, "layer": layer}}).encode()

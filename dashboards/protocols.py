"""Protocols: WebSocket sessions, L4 TCP pass-through, HTTP/2 streams and defences, gRPC statuses.

The HTTP RED panels (overview, traffic) count every request whatever its protocol; this board shows what those do
not: long-lived sessions and connections (WebSocket, TCP), HTTP/2's own events (streams, resets, GOAWAYs — a rapid
reset attack, CVE-2023-44487, shows here first) and gRPC failures, which answer HTTP 200 with a `grpc-status`
trailer and so never look like errors by status code.

gRPC: the request-duration histogram carries a non-OK `grpc-status` as `error_type="grpc_<code>"` (grpc/doc/
statuscodes.md numbering); a successful gRPC call has no label that tells it from any other request of its route,
so the error share is over all of the route's requests (a gRPC route: all of them are gRPC).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.promql import (HTTP2_EVENTS, SERVER_COUNT, TCP_ACTIVE, TCP_CONNECT_BUCKET, TCP_CONNECTIONS,
                                         TCP_RECEIVED, TCP_SENT, WEBSOCKET_ENDED, WEBSOCKET_SESSIONS, or_zero,
                                         quantile, ratio, sel, sum_, sum_rate)
from gatewatch.telemetry.names import H2Event, H2Reason, Label

L, R, I, LST = Label.LAYER, Label.ROUTE, Label.INSTANCE, Label.LISTENER
GRPC_ERROR = {Label.ERROR_TYPE: "~grpc_.*"}  # gatewatch/proxy/engine.py `_grpc_outcome`
H2_DEFENCE = {Label.EVENT: f"~{H2Event.RESET.value}|{H2Event.GOAWAY.value}"}


def grpc_error_share() -> str:
    """Per layer and route: requests that ended with a non-OK grpc-status / all of the route's requests."""
    every = sum_rate(sel(SERVER_COUNT), L, R)
    return ratio(or_zero(sum_rate(sel(SERVER_COUNT, GRPC_ERROR), L, R), every), every)


def build(opts) -> gd.Dashboard:  # noqa: ARG001 - same signature as the other boards
    d = P.new_dashboard("protocols", "Gatewatch / Protocols",
                        "WebSocket sessions, L4 TCP pass-through, HTTP/2 streams and defences, gRPC statuses.")
    d = d.with_row(gd.Row("WebSocket (RFC 6455)"))
    d = d.with_panel(P.timeseries(
        "Open WebSocket sessions by route and instance", "Sessions relayed right now. Each holds a client "
        "connection and an upstream connection until either side closes; a level that only rises means sessions "
        "are never closed (look at idle_timeout_s / max_duration_s).",
        [P.prom(sum_(sel(WEBSOCKET_SESSIONS), R, I), "{{gatewatch_route}} {{gatewatch_instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "WebSocket sessions ended/s by reason", "Why sessions ended: a close handshake from the client or the "
        "upstream (normal), a disconnect without one, idle_timeout / max_duration (our limits), drain (a reload "
        "or shutdown), instance_gone (ejected or unhealthy instance), protocol_error (1002), message_too_big "
        "(1009). The session's SERVER span has gatewatch.websocket.end and the close code.",
        [P.prom(sum_rate(sel(WEBSOCKET_ENDED), R, Label.REASON), "{{gatewatch_route}} {{reason}}")], "ops",
        stack=True))

    d = d.with_row(gd.Row("L4 TCP pass-through"))
    d = d.with_panel(P.timeseries(
        "TCP connections/s by outcome", "Connections that ended, per listener and how: proxied (both sides "
        "closed), client_abort / upstream_error (a reset), upstream_connect_error / upstream_timeout (no instance "
        "could be reached), no_healthy_upstream, upstream_overflow / connection_limit (limits), idle_timeout, "
        "drain_cut.",
        [P.prom(sum_rate(sel(TCP_CONNECTIONS), LST, Label.OUTCOME), "{{gatewatch_listener}} {{gatewatch_outcome}}")],
        "ops", stack=True))
    d = d.with_panel(P.timeseries(
        "Active TCP connections by instance", "Connections relaying now, per listener, pool and instance.",
        [P.prom(sum_(sel(TCP_ACTIVE), LST, Label.POOL, I),
                "{{gatewatch_listener}} {{gatewatch_pool}} {{gatewatch_instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "TCP bytes/s each way", "Bytes relayed per listener: received from clients (to the instances) and sent "
        "to clients (from the instances).",
        [P.prom(sum_rate(sel(TCP_RECEIVED), LST), "{{gatewatch_listener}} from clients"),
         P.prom(sum_rate(sel(TCP_SENT), LST), "{{gatewatch_listener}} to clients")], "Bps"))
    d = d.with_panel(P.timeseries(
        "TCP connect p95 by pool", "95th percentile of the time to connect to an instance (successful connects); "
        "a failed connect is counted under its error in the outcome panel.",
        [P.prom(quantile(0.95, sel(TCP_CONNECT_BUCKET, result="ok"), Label.POOL), "{{gatewatch_pool}}")], "s"))

    d = d.with_row(gd.Row("HTTP/2 (RFC 9113)"))
    d = d.with_panel(P.timeseries(
        "HTTP/2 connections and streams/s", "Per listener: connections opened, streams handed to the engine "
        "(opened) and streams the listener answered itself (refused: 431, 400, 501).",
        [P.prom(sum_rate(sel(HTTP2_EVENTS, event=f"~{H2Event.CONNECTION.value}|{H2Event.STREAM.value}"),
                         LST, Label.EVENT, Label.REASON),
                "{{gatewatch_listener}} {{event}} {{reason}}")], "ops"))
    d = d.with_panel(P.timeseries(
        "HTTP/2 resets and GOAWAYs by reason", "Stream resets (client_reset, refused_stream over the stream "
        f"limits, protocol_error) and connections we ended with GOAWAY. {H2Reason.RAPID_RESET.value} and "
        f"{H2Reason.HEADER_LIST_TOO_LARGE.value} are defences (ENHANCE_YOUR_CALM: a rapid-reset attack, "
        "CVE-2023-44487, or an HPACK bomb; GatewatchHTTP2RapidReset); drain is a normal GOAWAY NO_ERROR.",
        [P.prom(sum_rate(sel(HTTP2_EVENTS, H2_DEFENCE), LST, Label.EVENT, Label.REASON),
                "{{gatewatch_listener}} {{event}} {{reason}}")], "ops", stack=True))

    d = d.with_row(gd.Row("gRPC"))
    d = d.with_panel(P.timeseries(
        "gRPC errors/s by route and status", "Requests that ended with a non-OK grpc-status (the upstream's "
        "trailer, or Gatewatch's own trailers-only answer), as error.type grpc_<code>: 4 DEADLINE_EXCEEDED, "
        "8 RESOURCE_EXHAUSTED, 13 INTERNAL, 14 UNAVAILABLE, 16 UNAUTHENTICATED... (grpc/doc/statuscodes.md). "
        "They are HTTP 200s: the status-code panels elsewhere do not show them.",
        [P.prom(sum_rate(sel(SERVER_COUNT, GRPC_ERROR), L, R, Label.ERROR_TYPE),
                "{{gatewatch_layer}} {{gatewatch_route}} {{error_type}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "gRPC error share by route", "Requests with a non-OK grpc-status / all requests of the route (a "
        "successful gRPC call is not told apart from other requests in the metrics: on a route that mixes gRPC "
        "and plain HTTP the share is of both).",
        [P.prom(grpc_error_share(), "{{gatewatch_layer}} {{gatewatch_route}}")], "percentunit"))
    return d

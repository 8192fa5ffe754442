"""One request through real processes (the CLI), traced end to end and decoded from the real OTLP protobuf.

Two tiers:   edge SERVER → edge CLIENT → balancer SERVER → balancer CLIENT → backend SERVER
In-process:  edge SERVER → balance INTERNAL (layer balancer) → balancer CLIENT → backend SERVER
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support.procs import port_of


def balancer_cfg(backends, algorithm="round_robin"):
    return {
        "admin": {"address": "127.0.0.1:0"},
        "balancer": {
            "listeners": [{"name": "internal", "address": "127.0.0.1:0", "trust_forwarded_headers": True}],
            "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "shop"}],
            "pools": [{"name": "shop", "algorithm": algorithm, "instances": [
                {"id": b.name.removeprefix("backend-"), "host": "127.0.0.1", "port": port_of(b.info["address"])}
                for b in backends]}],
        },
    }


def edge_cfg(upstream_url=None, backends=None):
    routes = [{"name": "orders", "match": {"path": {"template": "/api/orders/{id}"}}, "upstream": "shop",
               "rewrite": {}}]
    cfg = {"admin": {"address": "127.0.0.1:0"},
           "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": routes}}
    if upstream_url:
        cfg["edge"]["upstreams"] = [{"name": "shop", "url": upstream_url}]
    else:
        cfg["balancer"] = {"pools": [{"name": "shop", "instances": [
            {"id": b.name.removeprefix("backend-"), "host": "127.0.0.1", "port": port_of(b.info["address"])}
            for b in backends]}]}
    return cfg


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def by_id(spans):
    return {s["span_id"]: s for s in spans}


def one(spans, **want):
    found = [s for s in spans if all((s["attributes"].get(k) if "." in k else s.get(k)) == v
                                     for k, v in want.items())]
    assert len(found) == 1, (want, [(s["name"], s["kind"], s["attributes"].get("gatewatch.layer")) for s in spans])
    return found[0]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_two_tier_request_is_one_trace_with_correlated_decision_logs(otlp, cluster, protocol):
    cluster.env = otlp.env(protocol)
    b = cluster.backend("inst-a")
    bal = cluster.gatewatch("balancer", balancer_cfg([b]))
    edge = cluster.gatewatch("edge", edge_cfg(f"http://{bal.listener('internal')}"))

    status, headers, body = get(f"http://{edge.listener('public')}/api/orders/42?x=1")
    assert status == 200
    assert json.loads(body)["instance"] == "inst-a"
    trace_id = headers["traceresponse"].split("-")[1]

    assert otlp.data.wait_for(lambda spans, logs: len([s for s in spans if s["trace_id"] == trace_id]) >= 5
                              and len([r for r in logs if r["trace_id"] == trace_id]) >= 3), otlp.data.snapshot()
    spans = otlp.data.trace(trace_id)
    assert len(spans) == 5, [(s["name"], s["kind"]) for s in spans]
    edge_server = one(spans, kind="SERVER", **{"gatewatch.layer": "edge"})
    edge_client = one(spans, kind="CLIENT", **{"gatewatch.layer": "edge"})
    bal_server = one(spans, kind="SERVER", **{"gatewatch.layer": "balancer"})
    bal_client = one(spans, kind="CLIENT", **{"gatewatch.layer": "balancer"})
    backend = [s for s in spans if s["resource"]["service.name"] == "demo-backend"]
    assert len(backend) == 1 and backend[0]["kind"] == "SERVER"
    backend = backend[0]

    # The parent chain, across three processes.
    assert edge_server["parent_span_id"] == ""
    assert edge_client["parent_span_id"] == edge_server["span_id"]
    assert bal_server["parent_span_id"] == edge_client["span_id"]
    assert bal_client["parent_span_id"] == bal_server["span_id"]
    assert backend["parent_span_id"] == bal_client["span_id"]

    # Who is who.
    assert edge_server["resource"]["service.name"] == "gatewatch-edge"
    assert bal_server["resource"]["service.name"] == "gatewatch-balancer"
    assert backend["resource"]["service.instance.id"] == "inst-a"
    assert edge_server["name"] == "GET /api/orders/{id}"
    assert edge_server["attributes"]["http.route"] == "/api/orders/{id}"
    assert edge_server["attributes"]["url.path"] == "/api/orders/42"
    assert edge_server["attributes"]["gatewatch.outcome"] == "proxied"
    assert edge_server["attributes"]["http.response.status_code"] == 200
    assert bal_server["attributes"]["gatewatch.outcome"] == "proxied"
    assert bal_server["attributes"]["http.route"] == "/*"
    assert bal_server["attributes"]["gatewatch.lb.algorithm"] == "round_robin"
    assert edge_client["attributes"]["server.port"] == port_of(bal.listener("internal"))
    assert bal_client["attributes"]["gatewatch.instance"] == "inst-a"
    assert bal_client["attributes"]["server.address"] == "127.0.0.1"
    assert bal_client["attributes"]["server.port"] == port_of(cluster.procs[0].info["address"])
    assert bal_client["attributes"]["network.peer.address"] == "127.0.0.1"
    assert bal_client["attributes"]["url.full"].endswith("/api/orders/42?x=1")
    for s in (edge_server, edge_client, bal_server, bal_client):
        assert s["attributes"]["gatewatch.request_id"] == headers["X-Request-Id"]

    # Decision logs point into this trace, at the span that decided.
    logs = [r for r in otlp.data.snapshot()[1] if r["trace_id"] == trace_id]
    span_ids = {s["span_id"] for s in spans}
    assert all(r["span_id"] in span_ids for r in logs)
    edge_route = [r for r in logs if r["event_name"] == "gatewatch.decision.route"
                  and r["attributes"]["gatewatch.layer"] == "edge"]
    assert len(edge_route) == 1 and edge_route[0]["span_id"] == edge_server["span_id"]
    assert edge_route[0]["attributes"]["gatewatch.decision.rule"] == "orders"
    assert edge_route[0]["attributes"]["gatewatch.decision.reason"] == "route.matched"
    pick = [r for r in logs if r["event_name"] == "gatewatch.decision.pick"]
    assert len(pick) == 1 and pick[0]["span_id"] == bal_server["span_id"]
    assert pick[0]["attributes"]["gatewatch.instance"] == "inst-a"
    assert pick[0]["attributes"]["gatewatch.lb.candidates"] == 1


def test_in_process_pattern_shows_both_layers(otlp, cluster):
    cluster.env = otlp.env("http/protobuf")
    b1, b2 = cluster.backend("inst-a"), cluster.backend("inst-b")
    edge = cluster.gatewatch("edge", edge_cfg(backends=[b1, b2]))
    seen = set()
    trace_ids = []
    for _ in range(2):
        status, headers, body = get(f"http://{edge.listener('public')}/api/orders/7")
        assert status == 200
        seen.add(json.loads(body)["instance"])
        trace_ids.append(headers["traceresponse"].split("-")[1])
    assert seen == {"inst-a", "inst-b"}  # round robin over two instances
    trace_id = trace_ids[0]
    assert otlp.data.wait_for(lambda spans, logs: len([s for s in spans if s["trace_id"] == trace_id]) >= 4)
    spans = otlp.data.trace(trace_id)
    assert len(spans) == 4
    server = one(spans, kind="SERVER", **{"gatewatch.layer": "edge"})
    balance = one(spans, kind="INTERNAL", **{"gatewatch.layer": "balancer"})
    client = one(spans, kind="CLIENT", **{"gatewatch.layer": "balancer"})
    backend = one(spans, kind="SERVER", **{"gatewatch.instance": client["attributes"]["gatewatch.instance"]})
    assert balance["parent_span_id"] == server["span_id"]
    assert client["parent_span_id"] == balance["span_id"]
    assert backend["parent_span_id"] == client["span_id"]
    assert balance["name"] == "balance shop"
    assert balance["attributes"]["gatewatch.lb.candidates"] == 2
    assert server["resource"]["service.name"] == "gatewatch-edge"
    assert otlp.data.wait_for(lambda spans, logs: len([r for r in logs if r["trace_id"] == trace_id]) >= 2)
    logs = {r["event_name"]: r for r in otlp.data.snapshot()[1] if r["trace_id"] == trace_id}
    assert logs["gatewatch.decision.route"]["span_id"] == server["span_id"]
    assert logs["gatewatch.decision.pick"]["span_id"] == balance["span_id"]
    assert logs["gatewatch.decision.pick"]["attributes"]["gatewatch.layer"] == "balancer"


def test_exemplar_in_openmetrics_names_a_received_trace(otlp, cluster):
    cluster.env = otlp.env("grpc")
    b = cluster.backend("inst-a")
    edge = cluster.gatewatch("edge", edge_cfg(backends=[b]))
    for i in range(5):
        get(f"http://{edge.listener('public')}/api/orders/{i}")
    req = urllib.request.Request(f"http://{edge.admin}/metrics",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    exemplars = [line.split('trace_id="')[1].split('"')[0] for line in text.splitlines()
                 if line.startswith("http_server_request_duration_seconds_bucket") and 'trace_id="' in line]
    assert exemplars
    def edge_server(spans):
        return [s for s in spans if s["trace_id"] == exemplars[0] and s["kind"] == "SERVER"
                and s["attributes"].get("gatewatch.layer") == "edge"]

    assert otlp.data.wait_for(lambda spans, logs: edge_server(spans))
    server = edge_server(otlp.data.snapshot()[0])
    assert len(server) == 1 and server[0]["attributes"]["gatewatch.route"] == "orders"


def test_inbound_trace_context_linked_by_default_continued_from_trusted_sources(otlp, cluster):
    """A public edge listener never lets a client pick the trace or switch Gatewatch's telemetry off: its
    context becomes a span link, even with sampled=00. Listed networks (here loopback, on a second listener)
    are trusted and continue the trace."""
    cluster.env = otlp.env("http/protobuf")
    b = cluster.backend("inst-a")
    cfg = edge_cfg(backends=[b])
    cfg["edge"]["listeners"].append({"name": "internal", "address": "127.0.0.1:0",
                                     "trusted_trace_sources": ["127.0.0.0/8"]})
    edge = cluster.gatewatch("edge", cfg)
    client_trace = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{client_trace}-b7ad6b7169203331-01"
    _, h1, _ = get(f"http://{edge.listener('internal')}/api/orders/1", {"traceparent": parent})
    assert h1["traceresponse"].split("-")[1] == client_trace
    _, h2, _ = get(f"http://{edge.listener('public')}/api/orders/1", {"traceparent": parent})
    new_trace = h2["traceresponse"].split("-")[1]
    assert new_trace != client_trace
    unsampled = f"00-{'1' * 32}-b7ad6b7169203331-00"
    _, h4, _ = get(f"http://{edge.listener('public')}/api/orders/1", {"traceparent": unsampled})
    still_traced = h4["traceresponse"].split("-")[1]  # sampled=00 from a public client changes nothing
    assert still_traced != "1" * 32 and h4["traceresponse"].endswith("-01")
    _, h3, _ = get(f"http://{edge.listener('public')}/api/orders/1", {"traceparent": "00-zzzz-not-valid"})
    assert h3["traceresponse"]  # invalid context never fails the request

    def edge_servers(spans):
        return {s["trace_id"] for s in spans if s["kind"] == "SERVER" and s["attributes"].get("gatewatch.layer")}

    assert otlp.data.wait_for(lambda spans, logs: {new_trace, client_trace, still_traced} <= edge_servers(spans))
    continued = one(otlp.data.trace(client_trace), kind="SERVER", **{"gatewatch.layer": "edge"})
    assert continued["parent_span_id"] == "b7ad6b7169203331"
    assert continued["attributes"]["gatewatch.trace_context"] == "continued"
    linked = one(otlp.data.trace(new_trace), kind="SERVER", **{"gatewatch.layer": "edge"})
    assert linked["parent_span_id"] == ""
    assert linked["links"] == [{"trace_id": client_trace, "span_id": "b7ad6b7169203331"}]
    assert linked["attributes"]["gatewatch.trace_context"] == "linked"
    unsampled_span = one(otlp.data.trace(still_traced), kind="SERVER", **{"gatewatch.layer": "edge"})
    assert unsampled_span["links"] == [{"trace_id": "1" * 32, "span_id": "b7ad6b7169203331"}]

"""Three real backend processes behind two real gatewatch tiers, under continuous load; one backend is killed
and later restarted. Asserted: no GET fails, no POST reaches a backend twice (the backends log every request
id), the balancer's ejection/health/failover decisions arrive over OTLP carrying the trace ids of the
requests that failed, the metrics count it, and after the restart the instance returns through slow start."""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

from tests.support.procs import port_of


def balancer_cfg(ports):
    return {
        "admin": {"address": "127.0.0.1:0"},
        "balancer": {
            "listeners": [{"name": "internal", "address": "127.0.0.1:0", "trust_forwarded_headers": True}],
            "routes": [{"name": "shop", "upstream": "shop",
                        "retries": {"attempts": 3, "retry_on": ["connect_failure", "reset"]},
                        "timeouts": {"connect_s": 0.5, "response_s": 5, "idle_s": 5}}],
            "pools": [{
                "name": "shop", "algorithm": "weighted_round_robin",
                "instances": [{"id": name, "host": "127.0.0.1", "port": port, "zone": zone}
                              for name, (port, zone) in ports.items()],
                "health_check": {"path": "/healthz", "interval_s": 0.2, "jitter_s": 0.05, "timeout_s": 0.2,
                                 "healthy_threshold": 2, "unhealthy_threshold": 2},
                "outlier_detection": {"consecutive_gateway_errors": 2, "base_ejection_s": 2,
                                      "max_ejection_percent": 50},
                "slow_start": {"window_s": 4, "min_weight_percent": 10},
            }],
        },
    }


def edge_cfg(balancer_url):
    return {"admin": {"address": "127.0.0.1:0"},
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                     "routes": [{"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "shop"}],
                     "upstreams": [{"name": "shop", "url": balancer_url}]}}


class Load:
    """GETs and POSTs (each POST with its own X-Request-Id) from two threads until stopped."""

    def __init__(self, url: str):
        self.url = url
        self.results: list[tuple[str, int, str]] = []  # (method, status, instance)
        self.post_ids: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(m,), daemon=True) for m in ("GET", "POST")]

    def _run(self, method: str) -> None:
        while not self._stop.is_set():
            rid = uuid.uuid4().hex
            data = b'{"order": 1}' if method == "POST" else None
            req = urllib.request.Request(f"{self.url}/api/orders", data=data, method=method,
                                         headers={"X-Request-Id": rid})
            if method == "POST":
                self.post_ids.append(rid)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    self.results.append((method, r.status, json.loads(r.read()).get("instance", "")))
            except urllib.error.HTTPError as e:
                self.results.append((method, e.code, ""))
            except OSError as e:  # the edge itself must never be unreachable
                self.results.append((method, -1, repr(e)))
            time.sleep(0.005 if method == "GET" else 0.02)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def mark(self) -> int:
        return len(self.results)


def metric(admin: str, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_instance_costs_no_get_and_comes_back_through_slow_start(cluster, otlp, tmp_path):
    cluster.env = otlp.env("grpc")
    logs = {n: tmp_path / f"{n}.requests" for n in ("a", "b", "c")}
    backends = {n: cluster.backend(n, zone=z, request_log=logs[n]) for n, z in (("a", "za"), ("b", "za"), ("c", "zb"))}
    ports = {n: (port_of(p.info["address"]), z) for (n, p), z in zip(backends.items(), ("za", "za", "zb"))}
    bal = cluster.gatewatch("balancer", balancer_cfg(ports))
    edge = cluster.gatewatch("edge", edge_cfg(f"http://{bal.listener('internal')}"))
    url = f"http://{edge.listener('public')}"

    with Load(url) as load:
        wait(lambda: load.mark() > 60, 10, "warm-up traffic")
        killed_at = load.mark()
        backends["b"].popen.send_signal(signal.SIGKILL)
        backends["b"].popen.wait(5)
        wait(lambda: json.loads(urllib.request.urlopen(f"http://{bal.admin}/upstreams").read())
             ["pools"]["shop"]["instances"][1]["state"] in ("unhealthy", "ejected"), 10, "b out of the pool")
        wait(lambda: load.mark() > killed_at + 150, 15, "traffic while b is down")
        down_until = load.mark()
        cluster.backend("b", zone="za", listen=f"127.0.0.1:{ports['b'][0]}", request_log=logs["b"])
        wait(lambda: json.loads(urllib.request.urlopen(f"http://{bal.admin}/upstreams").read())
             ["pools"]["shop"]["instances"][1]["state"] == "healthy", 10, "b healthy again")
        ramp = metric(bal.admin, "gatewatch_slow_start_weight_ratio", gatewatch_instance="b")
        back_at = load.mark()
        wait(lambda: sum(1 for m, s, i in load.results[back_at:] if i == "b") >= 10, 20, "traffic back on b")
    results = load.results

    # no GET failed, ever; every answer names a live instance
    gets = [r for r in results if r[0] == "GET"]
    assert gets and [r for r in gets if r[1] != 200] == []
    assert not any(i == "b" for _, _, i in results[killed_at + 20:down_until])  # nothing answered by the dead
    # no POST reached a backend twice (each backend logged every request id before answering)
    seen = collections.Counter(line.split()[1] for f in logs.values() for line in f.read_text().splitlines()
                               if line.startswith("POST "))
    assert seen and max(seen.values()) == 1
    assert set(seen) <= set(load.post_ids)
    # slow start: b came back with a reduced share
    assert 0 < ramp < 1

    # the balancer said why, over OTLP: the transition out of the pool and back
    def events(name):
        return [r for r in otlp.data.snapshot()[1] if r["event_name"] == name]
    assert otlp.data.wait_for(lambda s, l: any(r["attributes"].get("gatewatch.health.to") == "healthy"
                                               for r in events("gatewatch.health.transition")), 10)
    transitions = [(r["attributes"]["gatewatch.health.from"], r["attributes"]["gatewatch.health.to"])
                   for r in events("gatewatch.health.transition") if r["attributes"]["gatewatch.instance"] == "b"]
    assert transitions[0][0] == "healthy" and transitions[0][1] in ("unhealthy", "ejected")
    assert transitions[-1][1] == "healthy"
    # retries that went to another instance were decided and logged per request, in the request's trace
    failovers = [r for r in otlp.data.snapshot()[1] if r["event_name"] == "gatewatch.decision.failover"
                 and r["attributes"].get("gatewatch.failover.from") == "b"]
    assert failovers
    spans = otlp.data.snapshot()[0]
    failed_attempts = {s["trace_id"] for s in spans if s["kind"] == "CLIENT"
                       and s["attributes"].get("gatewatch.instance") == "b" and "error.type" in s["attributes"]}
    assert {r["trace_id"] for r in failovers} <= {s["trace_id"] for s in spans}
    assert failed_attempts & {r["trace_id"] for r in failovers}
    # an ejection (if passive detection got there before the probes) names requests that really failed on b
    for ej in events("gatewatch.outlier.ejection"):
        if "gatewatch.outlier.ejection_duration_s" in ej["attributes"]:
            assert set(ej["attributes"]["gatewatch.outlier.trace_ids"]) <= failed_attempts
    # and the metrics agree
    assert metric(bal.admin, "gatewatch_health_transitions_total", gatewatch_instance="b", state="healthy") >= 1
    assert metric(bal.admin, "gatewatch_retries_total", gatewatch_route="shop") >= 1
    assert metric(bal.admin, "gatewatch_failovers_total", gatewatch_pool="shop",
                  reason="failover.retry_other_instance") >= 1
    assert metric(bal.admin, "gatewatch_instance_requests_total", gatewatch_instance="b") > 0

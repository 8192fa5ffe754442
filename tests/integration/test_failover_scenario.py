"""A real failover, as an SRE lives it, on loopback: the alerts fire, the counters count every event, public clients
cannot hide their requests.

Scenario (a shortened version of the incident that showed what was wrong): one gatewatch process (an edge with a
JWT policy and a Redis rate limit, in front of its in-process pool `shop`: zone-a instances `a1`, `a2` at priority
0, `b1` at priority 1) under steady traffic; a real Prometheus scrapes its admin port every second and evaluates
the generated alert rules every second; every span and log goes to an OTLP receiver that decodes the protobuf.
Injected: `a1` is killed (SIGKILL), restarted, killed again; Redis is stopped once.

Checked:
- before anything is injected, no alert is pending or firing;
- after the first kill, `GatewatchFailoverSpike` is pending for pool `shop` (the pool serves from its failover
  priority: the share of requests served while failing over is the signal, not the number of moves);
- after Redis stops, `GatewatchRateLimitStoreUnavailable` is pending for that store;
- `increase()` over the scenario of every counter the injections move equals what was injected: two moves to the
  failover priority and two back, two `unhealthy` transitions of `a1` (its series exist at 0 from the start, so
  the first one counts);
- a public client's request with `sampled=00` is traced anyway (a new root linked to the client's context).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import jwt as pyjwt
import pytest

from gatewatch.dashboards.build import RULES_FILE, render_all
from gatewatch.dashboards.options import DEFAULT
from gatewatch.telemetry.names import Reason
from tests.dashboards.prom import Prometheus
from tests.edge.policies.support import RedisServer
from tests.support.procs import port_of

pytestmark = pytest.mark.timeout(240)

SECRET = "a-test-secret-of-at-least-32-bytes!!"
TOKEN = pyjwt.encode({"sub": "alice", "iss": "https://issuer.test", "aud": "gatewatch",
                      "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def config(backends: dict, redis_url: str) -> dict:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"service_name": "gatewatch-scenario", "export_interval_s": 0.2},
        "edge": {
            "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
            "routes": [{
                "name": "orders", "match": {"path": {"prefix": "/api"}}, "upstream": "shop",
                "timeouts": {"connect_s": 0.5, "response_s": 2, "idle_s": 2},
                "retries": {"attempts": 2, "backoff_base_s": 0.005},
                "policies": [
                    {"name": "auth", "type": "jwt", "algorithms": ["HS256"], "keys": [{"secret": SECRET}],
                     "issuer": "https://issuer.test", "audience": "gatewatch"},
                    {"name": "quota", "type": "rate_limit", "limit": 100000, "window_s": 60, "key": "consumer",
                     "store": "redis", "redis": {"url": redis_url, "timeout_s": 0.2, "on_error": "open",
                                                 "retry_after_s": 0.5}}]}]},
        "balancer": {"pools": [{
            "name": "shop",
            "instances": [{"id": i, "host": "127.0.0.1", "port": port_of(p.info["address"]),
                           "priority": 0 if i.startswith("a") else 1, "zone": "zone-a" if i.startswith("a") else "zone-b"}
                          for i, p in backends.items()],
            # A kill is seen within ~1 s (fall 2 × 0.5 s), a restart within ~1 s (rise 2).
            "health_check": {"path": "/healthz", "interval_s": 0.5, "timeout_s": 0.3, "jitter_s": 0,
                             "healthy_threshold": 2, "unhealthy_threshold": 2},
            "outlier_detection": {"consecutive_gateway_errors": 3, "base_ejection_s": 5},
        }]},
    }


class Traffic:
    """Requests at a steady ~40/s from a thread, with a valid token; counts what clients saw."""

    def __init__(self, url: str):
        self.url = url
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            req = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {TOKEN}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    r.read()
                    status = r.status
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1
            time.sleep(0.025)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def alerts(prom: Prometheus) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for a in prom.active_alerts():
        out.setdefault(a["labels"]["alertname"], []).append(a)
    return out


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def scalar(prom: Prometheus, expr: str) -> float:
    answer = prom.instant(expr)
    assert answer.ok, (expr, answer.error)
    result = answer.data["result"]
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_a_failover_and_a_store_outage_page_and_every_event_is_counted(tmp_path, otlp, cluster):
    cluster.env = otlp.env("http/protobuf")
    redis = RedisServer(tmp_path).start()
    backends = {i: cluster.backend(i, zone="zone-a" if i.startswith("a") else "zone-b") for i in ("a1", "a2", "b1")}
    gw = cluster.gatewatch("gateway", config(backends, redis.url))
    rules = tmp_path / "rules.yml"
    rules.write_text(render_all(DEFAULT)[RULES_FILE])
    prom = Prometheus(tmp_path, {"gatewatch": [gw.admin]}, [rules])
    try:
        prom.wait_ready()
        url = f"http://{gw.listener('public')}/api/orders/1"
        with Traffic(url) as traffic:
            wait_until(lambda: prom.targets_up() and all(h == "up" for h in prom.targets_up().values()), 20,
                       "Prometheus to scrape gatewatch")
            start = time.time()
            time.sleep(6)  # a quiet baseline: several scrapes and rule evaluations
            assert alerts(prom) == {}, "nothing is wrong yet"

            a1_address = backends["a1"].info["address"]
            backends["a1"].popen.kill()  # first incident
            spike = wait_until(lambda: alerts(prom).get("GatewatchFailoverSpike"), 40, "the failover alert")
            assert spike[0]["labels"]["gatewatch_pool"] == "shop" and spike[0]["state"] in ("pending", "firing")

            backends["a1"] = cluster.backend("a1", zone="zone-a", listen=a1_address)  # recovered
            wait_until(lambda: scalar(prom, 'gatewatch_pool_active_priority{gatewatch_pool="shop"}') == 0, 30,
                       "traffic back on priority 0")
            backends["a1"].popen.kill()  # second incident
            wait_until(lambda: scalar(prom, 'gatewatch_pool_active_priority{gatewatch_pool="shop"}') == 1, 30,
                       "the second failover")
            backends["a1"] = cluster.backend("a1", zone="zone-a", listen=a1_address)
            wait_until(lambda: scalar(prom, 'gatewatch_pool_active_priority{gatewatch_pool="shop"}') == 0, 30,
                       "traffic back on priority 0 again")

            redis.kill()  # the store outage
            store = wait_until(lambda: alerts(prom).get("GatewatchRateLimitStoreUnavailable"), 40,
                               "the rate-limit store alert")
            assert store[0]["state"] in ("pending", "firing")
            time.sleep(2)  # one more scrape of the final counts
            window = f"{int(time.time() - start) + 5}s"

            # Every injected event is counted, the first of each kind included.
            def increase(selector: str) -> int:
                return round(scalar(prom, f"sum(increase({selector}[{window}]))"))

            shop = 'gatewatch_pool="shop"'
            assert increase(f'gatewatch_failovers_total{{{shop},reason="{Reason.FAILOVER_PRIORITY_DEGRADED.value}"}}') == 2
            assert increase(f'gatewatch_failovers_total{{{shop},reason="{Reason.FAILOVER_PRIORITY_RECOVERED.value}"}}') == 2
            assert increase(f'gatewatch_health_transitions_total{{{shop},gatewatch_instance="a1",state="unhealthy"}}') == 2
            assert scalar(prom, "min(gatewatch_ratelimit_store_up)") == 0
            assert scalar(prom, f'sum(increase(gatewatch_pool_requests_total{{{shop},failover="priority"}}[{window}]))') > 0

            # A public client cannot switch tracing off: sampled=00 becomes a link, our own sampling decides.
            client_trace = "4" * 32
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}",
                                                       "traceparent": f"00-{client_trace}-{'5' * 16}-00"})
            with urllib.request.urlopen(req, timeout=5) as r:
                ours = r.headers["traceresponse"].split("-")[1]
        assert ours != client_trace
        def edge_server(spans):
            return [s for s in spans if s["trace_id"] == ours and s["kind"] == "SERVER"
                    and s["attributes"].get("gatewatch.layer") == "edge"]

        assert otlp.data.wait_for(lambda spans, logs: edge_server(spans))
        [server] = edge_server(otlp.data.snapshot()[0])  # not the backend's SERVER span of the same trace
        assert server["links"] == [{"trace_id": client_trace, "span_id": "5" * 16}]
        # Clients saw answers throughout (retries and the failover level hid the incidents; the store fails open).
        assert set(traffic.statuses) <= {200, 502, 503}, traffic.statuses
        assert traffic.statuses.get(200, 0) > 0.9 * sum(traffic.statuses.values()), traffic.statuses
    finally:
        prom.stop()
        redis.kill()

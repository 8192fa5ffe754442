"""The generated boards and rules against a real Prometheus scraping real Gatewatch processes.

Scenario (two tiers, as `gatewatch demo` runs them): three demo backends behind a balancer process (pool `shop`
with health checks, outlier detection, slow start, retries; a `tcp` listener relaying to pool `shop-discovered`,
found by file discovery) behind an edge process (routes `orders` with API-key auth, a per-consumer rate limit, a
circuit breaker and a shadow IP rule; `catalog` with a generous rate limit in a real Redis; `checkout`, a weighted
split with a mirror, `assets` with a response cache and `bundle`, an aggregate route with a JSON transform, for the
Traffic board; `live`, WebSocket sessions to an echo server of the test), plus a "canary" edge whose collector
accepts connections and never answers (its telemetry queue overflows: drops). A real Prometheus scrapes the three
admin endpoints every second with exemplar storage on and evaluates the generated rules every second. Traffic: a
baseline (with one WebSocket session, one TCP pass-through connection, one h2c request made with the h2 library and
one gRPC call refused with grpc-status 16, for the Protocols board), then instance `inst-b` is killed (SIGKILL)
while traffic continues, then auth failures, a rate-limit burst and the canary's traffic, then Redis is killed.

Checked through Prometheus's HTTP API:
- every PromQL expression of every panel, variable, rule and trace-to-metrics query parses, and returns data
  (range queries over the scenario, variables set to the values their queries return);
- every metric the expressions name exists (the failure message lists the expressions whose metrics the runtime
  does not export yet — they fail, they are never skipped);
- every rule loaded and evaluates without error, and the sub-expressions it compares return data;
- variable queries return exactly the scenario's routes, pools and instances;
- the failover alert (the share of requests a pool served while failing over) is neither pending nor firing
  before the kill, and is pending or firing after it;
- the rate-limit store alert is pending or firing once Redis is gone (the store's gauge reads 0);
- exemplars on the latency panels carry trace ids the OTLP receiver really received.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import aiohttp
import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import web

from gatewatch.dashboards.alerts import rules as alert_rules
from gatewatch.dashboards.build import RULES_FILE, render_all
from gatewatch.dashboards.options import DEFAULT
from tests.dashboards.prom import Prometheus, has_data
from tests.dashboards.queries import Query, all_queries, promql_metrics, substitute, variable_parts
from tests.edge.policies.support import RedisServer
from tests.support.certs import Pki
from tests.support.net import closed_port
from tests.support.procs import Proc, cli, port_of

pytestmark = pytest.mark.timeout(150)

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
INSTANCES = ("inst-a", "inst-b", "inst-c")
ROUTES = {"orders", "catalog", "checkout", "assets", "bundle", "live"}
EXPECTED_VARIABLES = {  # variable → the values its query must return in this scenario
    "route": ROUTES, "upstream": {"shop"}, "instance": set(INSTANCES), "pool": {"shop", "shop-discovered"}}
RATE_WINDOW = "10s"  # what $__rate_interval becomes (Grafana: max(4 × scrape interval, step + scrape interval))


def _hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def balancer_config(backends: list[Proc], discovered_file) -> dict:
    """`discovered_file`: the instance list of pool `shop-discovered` (file discovery, the discovery panel), which
    the `tcp` listener relays to (the Protocols board's TCP panels)."""
    discovered_file.write_text(json.dumps([{"id": "tcp-a", "host": "127.0.0.1",
                                            "port": port_of(backends[0].info["address"])}]))
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"service_name": "gatewatch-balancer"},
        "balancer": {
            "listeners": [{"name": "internal", "address": "127.0.0.1:0", "trust_forwarded_headers": True,
                           "trace_response_header": False},
                          {"name": "tcp", "address": "127.0.0.1:0", "mode": "tcp", "pool": "shop-discovered"}],
            "routes": [{"name": "shop", "upstream": "shop",
                        "retries": {"attempts": 3, "retry_on": ["connect_failure", "reset"]}}],
            "pools": [{
                "name": "shop", "algorithm": "weighted_round_robin",
                "instances": [{"id": b.name.removeprefix("backend-"), "host": "127.0.0.1",
                               "port": port_of(b.info["address"])} for b in backends],
                # The killed instance is marked unhealthy after ~10 s; until then outlier detection ejects it and
                # lets it back (0.5 s, 1 s, 1.5 s, ...) and each return costs failovers: the sustained failover
                # share the alert is about. A faster check would end the incident before the alert could notice
                # it, as it should in production (one flap must not page).
                "health_check": {"path": "/healthz", "interval_s": 1.0, "timeout_s": 0.5, "jitter_s": 0,
                                 "healthy_threshold": 1, "unhealthy_threshold": 10},
                "outlier_detection": {"consecutive_gateway_errors": 3, "base_ejection_s": 0.5},
                "slow_start": {"window_s": 5},
            }, {"name": "shop-discovered", "discovery": {"file": {"path": str(discovered_file)}}}],
        },
    }


def edge_config(balancer_url: str, service: str, redis_url: str, server_cert=None, ws_url: str = "") -> dict:
    orders_policies = [
        {"name": "auth", "type": "api_key", "keys": [{"consumer": c, "hash": _hash(k)} for c, k in KEYS.items()]},
        {"name": "per-consumer", "type": "rate_limit", "key": "consumer", "limit": 30, "window_s": 1},
        {"name": "breaker", "type": "circuit_breaker", "failures": 50, "open_s": 5},
        {"name": "office-only", "type": "ip_access", "deny": ["127.0.0.0/8"], "shadow": True},
    ]
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"service_name": service},
        "edge": {
            "listeners": [{"name": "public", "address": "127.0.0.1:0"}] + ([{
                "name": "secure", "address": "127.0.0.1:0",
                "tls": {"certificates": [{"cert_file": server_cert.cert, "key_file": server_cert.key}]}}]
                if server_cert else []),
            "routes": [
                {"name": "orders", "match": {"path": {"template": "/api/orders/{id}"}}, "upstream": "shop-tier",
                 "policies": orders_policies},
                # a partner API whose identity provider is down all along: the provider gauge reads 0
                {"name": "partners", "match": {"path": {"prefix": "/api/partners"}}, "upstream": "shop-tier",
                 "policies": [{"name": "partner-jwt", "type": "jwt", "issuer": "https://idp.partners.test",
                               "jwks": {"url": f"http://127.0.0.1:{closed_port()}/jwks.json"},
                               "audience": "partners-api", "algorithms": ["RS256"]}]},
                {"name": "catalog", "match": {"path": {"prefix": "/api/catalog"}}, "upstream": "shop-tier",
                 "policies": [{"name": "catalog-quota", "type": "rate_limit", "limit": 100000, "window_s": 60,
                               "store": "redis", "redis": {"url": redis_url, "timeout_s": 0.2, "on_error": "open",
                                                           "retry_after_s": 0.5}}]},
                # the Traffic board's features (issue 19): a split with a mirror, a cache, an aggregate route
                {"name": "checkout", "match": {"path": {"prefix": "/api/checkout"}},
                 "upstreams": [{"name": "shop-tier", "weight": 80}, {"name": "shop-tier-canary", "weight": 20}],
                 "mirror": {"upstream": "shop-tier-shadow"}},
                # WebSocket sessions (the Protocols board), to an echo server of the test
                {"name": "live", "match": {"path": {"prefix": "/live"}}, "upstream": "ws-echo"},
                {"name": "assets", "match": {"path": {"prefix": "/api/assets"}}, "upstream": "shop-tier",
                 "cache": {}},
                {"name": "bundle", "match": {"path": {"template": "/api/bundle/{id}"}},
                 "policies": [{"name": "shape", "type": "json_transform", "response": {"remove": ["headers"]}}],
                 "aggregate": {"on_error": "omit", "calls": [
                     {"name": "stable", "upstream": "shop-tier", "path": "/anything/stable/{id}"},
                     {"name": "canary", "upstream": "shop-tier-canary", "path": "/anything/canary/{id}"}]}},
            ],
            "upstreams": [{"name": "ws-echo", "url": ws_url or balancer_url},
                          {"name": "shop-tier", "url": balancer_url},
                          {"name": "shop-tier-canary", "url": balancer_url},
                          {"name": "shop-tier-shadow", "url": balancer_url}],
        },
    }


def feature_traffic(edge: str) -> list[int]:
    """Requests through the split and its mirror, the cache and the aggregate route (the Traffic board)."""
    statuses = []
    for i in range(20):
        statuses += [send(f"http://{edge}/api/checkout/{i}"), send(f"http://{edge}/api/assets/{i % 5}"),
                     send(f"http://{edge}/api/bundle/{i}")]
    return statuses


class EchoWebSocketServer:
    """A WebSocket echo server (aiohttp, on 127.0.0.1 port 0) in a thread of its own: the `live` route's upstream."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/live", self._echo)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def __enter__(self) -> "EchoWebSocketServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def protocol_traffic(edge: str, tcp: str) -> list[str]:
    """One WebSocket session, one TCP pass-through connection, one h2c request and one failed gRPC call (the
    Protocols board). Returns what went wrong."""
    problems = []

    async def websocket() -> None:
        timeout = aiohttp.ClientWSTimeout(ws_close=5)
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://{edge}/live", timeout=timeout) as ws:
            await ws.send_str("ping")
            msg = await ws.receive(timeout=5)
            if msg.data != "ping":
                problems.append(f"WebSocket echo answered {msg!r}")
    try:
        asyncio.run(websocket())
    except (TimeoutError, aiohttp.ClientError) as err:
        problems.append(f"WebSocket session failed: {err!r}")
    host, port = tcp.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:  # HTTP/1.0 over the L4 relay
        conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: tcp\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer.split(b"\r\n", 1)[0]:
        problems.append(f"TCP relay answered {answer[:80]!r}")
    status = h2c_get(edge, "/api/catalog/h2c")
    if status != 200:
        problems.append(f"h2c request answered {status}")
    # a gRPC call refused by the API-key policy: a trailers-only answer, grpc-status 16 (UNAUTHENTICATED)
    grpc_status = send(f"http://{edge}/api/orders/grpc", {"Content-Type": "application/grpc"})
    if grpc_status != 200:
        problems.append(f"the refused gRPC call answered HTTP {grpc_status}, expected a trailers-only 200")
    return problems


def h2c_get(address: str, path: str) -> int:
    """One GET over HTTP/2 with prior knowledge (RFC 9113 §3.3), with the h2 library; the response's :status."""
    host, port = address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", address)],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        status = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return status
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded):
                    conn.close_connection()
                    sock.sendall(conn.data_to_send())
                    return status
            sock.sendall(conn.data_to_send())


def start(workdir, name: str, config: dict, env: dict) -> Proc:
    import yaml

    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Proc(name, cli("run", "-c", str(path)), workdir, env)


def send(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code
    except OSError:
        return 0


class Traffic:
    """Steady background traffic (alice's orders and catalog reads) from a few threads until stopped."""

    def __init__(self, edge: str, rps: float = 6.0, threads: int = 2):
        self.edge, self.period = edge, threads / rps
        self.stop_event = threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            if n % 2:
                status = send(f"http://{self.edge}/api/orders/{i}{n}", {"X-API-Key": KEYS["alice"]})
            else:
                status = send(f"http://{self.edge}/api/catalog/items/{n}")
            self.statuses.append(status)
            self.stop_event.wait(self.period)

    def __enter__(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(10)


def alert_states(prom: Prometheus, name: str) -> set[str]:
    return {a["state"] for a in prom.active_alerts() if a["labels"].get("alertname") == name}


def failover_alert_states(prom: Prometheus) -> set[str]:
    return alert_states(prom, "GatewatchFailoverSpike")


@dataclass
class Report:
    problems: dict[str, list[str]] = field(default_factory=dict)
    missing_metrics: dict[str, set[str]] = field(default_factory=dict)  # metric → where it is used

    def add(self, kind: str, text: str) -> None:
        self.problems.setdefault(kind, []).append(text)

    def render(self) -> str:
        head = ""
        if self.missing_metrics:
            head = "\nmetrics the runtime does not export (yet): " + ", ".join(
                f"{m} ({len(w)} expression{'s' if len(w) > 1 else ''})" for m, w in sorted(self.missing_metrics.items()))
        return head + "\n".join(f"\n== {kind} ({len(items)}) ==\n" + "\n".join(f"- {t}" for t in items)
                                for kind, items in self.problems.items())


def test_boards_and_rules_against_real_prometheus(tmp_path, otlp, blackhole):
    files = render_all(DEFAULT)
    rules_path = tmp_path / "gatewatch-alerts.yml"
    rules_path.write_text(files[RULES_FILE])
    env = otlp.env("grpc")
    procs: list[Proc] = []
    prom = None
    report = Report()
    redis = RedisServer(tmp_path)
    echo = EchoWebSocketServer()
    try:
        echo.__enter__()
        # --- processes -------------------------------------------------------------------------------------
        redis.start()
        backends = [Proc(f"backend-{i}", cli("backend", "--id", i, "--zone", "z1"), tmp_path, env) for i in INSTANCES]
        procs += backends
        for b in backends:
            b.wait_ready()
        balancer = start(tmp_path, "balancer", balancer_config(backends, tmp_path / "discovered.json"), env)
        procs.append(balancer)
        balancer.wait_ready()
        bal_url = f"http://{balancer.listener('internal')}"
        pki = Pki(tmp_path / "pki")
        edge = start(tmp_path, "edge", edge_config(bal_url, "gatewatch-edge", redis.url, pki.leaf("edge"),
                                                   echo.url), env)
        canary_cfg = edge_config(bal_url, "gatewatch-canary", redis.url)
        canary_cfg["telemetry"].update({"queue_size": 8, "batch_size": 4, "export_interval_s": 0.2})
        canary = start(tmp_path, "canary", canary_cfg, {"OTEL_EXPORTER_OTLP_ENDPOINT": blackhole,
                                                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                                        "OTEL_EXPORTER_OTLP_TIMEOUT": "10000"})
        procs += [edge, canary]
        edge.wait_ready()
        canary.wait_ready()
        prom = Prometheus(tmp_path, {"gatewatch": [edge.admin, balancer.admin], "gatewatch-canary": [canary.admin]},
                          [rules_path])
        prom.wait_ready()
        t0 = time.time()
        public = edge.listener("public")

        # --- traffic ---------------------------------------------------------------------------------------
        with Traffic(public) as traffic:
            features = feature_traffic(public)
            protocol_problems = protocol_traffic(public, balancer.listener("tcp"))
            time.sleep(6)  # baseline
            secure = ssl.create_default_context(cafile=pki.ca_file)
            for i in range(5):  # over TLS (the TLS panels' handshakes), and once in plaintext to the TLS port
                req = urllib.request.Request(f"https://localhost:{edge.listener('secure').split(':')[1]}/api/catalog/{i}")
                with urllib.request.urlopen(req, timeout=5, context=secure) as r:
                    r.read()
            send(f"http://{edge.listener('secure')}/api/catalog/plaintext")
            before_kill = failover_alert_states(prom)
            kill_at = time.time()
            backends[1].popen.send_signal(signal.SIGKILL)
            after_kill: set[str] = set()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                after_kill |= failover_alert_states(prom)
                if after_kill and time.time() - kill_at > 8:
                    break
                time.sleep(1)
            # After the kill (so their attempts do not dilute the failover share the alert measures):
            for i in range(10):  # auth failures: missing and wrong keys
                send(f"http://{public}/api/orders/{i}")
                send(f"http://{public}/api/orders/{i}", {"X-API-Key": "not-a-key"})
            # Concurrent, so the 60 land inside one 1 s window of bob's 30/s limit even on a loaded machine (one
            # after the other, each on a new connection, they could spread over two windows and all pass).
            with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
                burst = list(pool.map(lambda i: send(f"http://{public}/api/orders/{i}", {"X-API-Key": KEYS["bob"]}),
                                      range(60)))
            for i in range(40):  # the canary's collector never answers: its telemetry queue overflows
                send(f"http://{canary.listener('public')}/api/catalog/{i}")
            redis.kill()  # the store outage: catalog's policy fails open, the store's gauge drops to 0
            store_states: set[str] = set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not store_states:
                send(f"http://{public}/api/catalog/after-redis")
                time.sleep(0.5)
                store_states = alert_states(prom, "GatewatchRateLimitStoreUnavailable")
        time.sleep(2.5)  # the last scrape and rule evaluation
        t1 = time.time()
        for p in (edge, balancer, canary):  # kept next to the processes' logs, for whoever reads a failure
            with urllib.request.urlopen(f"http://{p.admin}/metrics", timeout=5) as r:
                (tmp_path / f"{p.name}.metrics.txt").write_bytes(r.read())

        # --- what the scenario itself did ------------------------------------------------------------------
        if 429 not in burst:
            report.add("scenario", f"the rate-limit burst got no 429 (statuses {sorted(set(burst))})")
        edge_metrics = (tmp_path / "edge.metrics.txt").read_text()
        for line in ('gatewatch_tls_handshakes_total{gatewatch_listener="secure",tls_protocol_version="1.3"} 5.0',
                     'gatewatch_tls_handshake_failures_total{gatewatch_listener="secure",reason="not_tls"} 1.0'):
            if line not in edge_metrics:
                report.add("scenario", f"the TLS listener's traffic is not counted: no {line!r}")
        for problem in protocol_problems:
            report.add("scenario", problem)
        if set(features) != {200}:
            report.add("scenario", f"the split, cache or aggregate routes failed: {sorted(set(features))}")
        if not traffic.statuses or traffic.statuses.count(200) < len(traffic.statuses) * 0.8:
            report.add("scenario", f"baseline traffic mostly failed: {sorted(set(traffic.statuses))}")
        if before_kill:
            report.add("alerts", f"GatewatchFailoverSpike was {before_kill} before the kill")
        if not store_states & {"pending", "firing"}:
            up = prom.instant(next(r for r in alert_rules(DEFAULT) if r.name == "GatewatchRateLimitStoreUnavailable")
                              .signals[0])
            report.add("alerts", "GatewatchRateLimitStoreUnavailable never pending or firing after Redis was killed "
                                 f"(store up: {up.data['result'] if up.ok else up.error})")
        if not after_kill & {"pending", "firing"}:
            share = prom.instant(next(r for r in alert_rules(DEFAULT) if r.name == "GatewatchFailoverSpike")
                                 .expr.split(" > ")[0])
            report.add("alerts", "GatewatchFailoverSpike never pending or firing during the kill (failover share "
                                 f"now: {share.data['result'] if share.ok else share.error})")

        check_everything(prom, files, report, t0, t1, otlp)
    finally:
        if prom is not None:
            prom.stop()
        for p in reversed(procs):
            p.stop()
        redis.kill()
        echo.__exit__()
    assert not report.problems, (f"the dashboards and rules against a real Prometheus (process logs and final "
                                 f"/metrics in {tmp_path}):" + report.render())


def check_everything(prom: Prometheus, files: dict[str, str], report: Report, t0: float, t1: float, otlp) -> None:
    present = prom.metric_names()
    queries = all_queries(files)
    range_ = f"{int(t1 - t0) + 1}s"

    def missing(expr: str, where: str = "") -> str:
        absent = sorted(promql_metrics(expr) - present)
        for m in absent:
            report.missing_metrics.setdefault(m, set()).add(where or expr)
        return f" — not exported by the runtime: {', '.join(absent)}" if absent else ""

    # Variables, in dashboard order (a variable may use the ones before it).
    values: dict[str, dict[str, str]] = {}
    for q in [q for q in queries if q.kind == "variable"]:
        board, name = q.where.split(" / $")
        selector, label = variable_parts(q.text)
        selector = substitute(selector, values.get(board, {}))
        answer = prom.label_values(label, selector, t0, t1)
        got = set(answer.data or []) if answer.ok else set()
        if not answer.ok:
            report.add("variables", f"{q.where}: {answer.error}")
        elif got != EXPECTED_VARIABLES[name]:
            report.add("variables", f"{q.where}: {sorted(got)}, expected {sorted(EXPECTED_VARIABLES[name])}"
                                    f"{missing(selector, q.where)}")
        values.setdefault(board, {})[name] = "|".join(sorted(got)) or "none"

    # Every panel and trace-to-metrics expression: parses, returns data.
    for q in [q for q in queries if q.kind == "promql"]:
        board = q.where.split(" / ")[0]
        expr = substitute(q.text, values.get(board, {}), RATE_WINDOW, range_)
        answer = prom.range(expr, t0, t1) if "$__range" not in q.text else prom.instant(expr)
        if not answer.ok:
            report.add("expressions that do not parse or evaluate", f"{q.where}: {answer.error}\n    {expr}")
        elif not has_data(answer):
            report.add("expressions without data", f"{q.where}{missing(expr, q.where)}\n    {expr}")
        elif promql_metrics(expr) - present:  # data only thanks to a zero fallback (`x or whole * 0`)
            report.add("expressions with data but a metric the runtime does not export",
                       f"{q.where}{missing(expr, q.where)}\n    {expr}")

    # Rules: loaded, evaluated without error, and what they compare returns data.
    loaded = {r["name"]: r for r in prom.rules()}
    for rule in alert_rules(DEFAULT):
        got = loaded.get(rule.name)
        if got is None:
            report.add("rules", f"{rule.name}: not loaded by Prometheus")
            continue
        if got.get("health") != "ok" or got.get("lastError"):
            report.add("rules", f"{rule.name}: health {got.get('health')} {got.get('lastError')}")
        for signal_ in rule.signals:
            answer = prom.range(signal_, t0, t1)
            if not answer.ok:
                report.add("rules", f"{rule.name}: {answer.error}\n    {signal_}")
            elif not has_data(answer):
                report.add("rule signals without data", f"{rule.name}{missing(signal_, rule.name)}\n    {signal_}")
        if promql_metrics(got["query"]) - present:
            report.add("rules naming a metric the runtime does not export", f"{rule.name}"
                                                                            f"{missing(got['query'], rule.name)}")

    check_exemplars(prom, queries, values, report, t0, t1, otlp)


def check_exemplars(prom: Prometheus, queries: list[Query], values, report: Report, t0: float, t1: float,
                    otlp) -> None:
    """Exemplars of the latency panels name traces the OTLP receiver got (the canary's collector is a black
    hole, so its exemplars name traces nobody received: they are left out on purpose)."""
    wanted: dict[str, set[str]] = {}
    for q in [q for q in queries if q.exemplar]:
        expr = substitute(q.text, values.get(q.where.split(" / ")[0], {}), RATE_WINDOW)
        answer = prom.exemplars(expr, t0, t1)
        if not answer.ok:
            report.add("exemplars", f"{q.where}: {answer.error}")
            continue
        ids = {e["labels"].get("trace_id") for s in answer.data if s["seriesLabels"].get("job") == "gatewatch"
               for e in s["exemplars"]}
        if not ids or None in ids:
            report.add("exemplars", f"{q.where}: no exemplars with a trace_id ({len(answer.data)} series)")
        wanted[q.where] = ids - {None}
    every = set().union(*wanted.values()) if wanted else set()
    otlp.data.wait_for(lambda spans, logs: every <= {s["trace_id"] for s in spans}, timeout_s=10)
    received = {s["trace_id"] for s in otlp.data.snapshot()[0]}
    for where, ids in wanted.items():
        unknown = ids - received
        if unknown:
            report.add("exemplars", f"{where}: {len(unknown)} of {len(ids)} exemplar trace ids never reached the "
                                    f"OTLP receiver, e.g. {sorted(unknown)[:3]}")

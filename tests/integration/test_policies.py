"""Policies in real `gatewatch` processes (the CLI, as users run it):

- two processes share one Redis-backed limit exactly; killing Redis makes each policy fail open or closed as
  configured, with the decision logged over OTLP;
- a JWKS endpoint that goes down: cached keys keep verifying tokens, unknown kids are refused.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.edge.policies.jwt_keys import AUD, ISS, jwk, token
from tests.edge.policies.support import RedisServer
from tests.support.procs import port_of


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def gatewatch_cfg(backend, routes):
    return {"admin": {"address": "127.0.0.1:0"},
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": routes},
            "balancer": {"pools": [{"name": "pool", "instances": [
                {"id": "b1", "host": "127.0.0.1", "port": port_of(backend.info["address"])}]}]}}


def limited_route(name, prefix, redis_url, on_error, limit):
    return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "pool", "policies": [
        {"name": "shared", "type": "rate_limit", "key": "route", "limit": limit, "window_s": 3600,
         "algorithm": "sliding_window" if on_error == "open" else "token_bucket", "store": "redis",
         "redis": {"url": redis_url, "timeout_s": 0.1, "on_error": on_error, "retry_after_s": 0.5}}]}


def test_two_processes_share_one_redis_limit_exactly_then_fail_open_or_closed(cluster, tmp_path, otlp):
    redis = RedisServer(tmp_path).start()
    try:
        backend = cluster.backend("b1")
        routes = [limited_route("open", "/open", redis.url, "open", 10),
                  limited_route("closed", "/closed", redis.url, "closed", 10)]
        cfg = gatewatch_cfg(backend, routes)
        a = cluster.gatewatch("gw-a", cfg, env=otlp.env("grpc"))
        b = cluster.gatewatch("gw-b", cfg, env=otlp.env("grpc"))
        bases = [f"http://{p.listener('public')}" for p in (a, b)]
        for prefix in ("/open", "/closed"):  # token bucket and sliding window, 30 requests for a limit of 10
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda i: (i % 2, get(bases[i % 2] + prefix + "/x")[0]), range(30)))
            assert sum(status == 200 for _, status in results) == 10, results
            assert sum(status == 429 for _, status in results) == 20
            assert {proc for proc, status in results if status == 200} == {0, 1}  # both processes admitted some

        redis.kill()
        open_status = [get(base + "/open/x") for base in bases]
        closed_status = [get(base + "/closed/x") for base in bases]
        assert [s for s, _, _ in open_status] == [200, 200]  # fail-open: the limiter is bypassed
        assert [s for s, _, _ in closed_status] == [429, 429]  # fail-closed: refused
        assert json.loads(closed_status[0][2])["error"]["outcome"] == "rate_limited"
        ids = {h["X-Request-Id"]: route for (_, h, _), route in zip(open_status + closed_status,
                                                                     ["open", "open", "closed", "closed"])}

        def logged(spans, logs):
            return {r["attributes"].get("gatewatch.request_id") for r in logs
                    if r["event_name"] == "gatewatch.decision.policy"
                    and r["attributes"].get("gatewatch.decision.reason") == "ratelimit.store_unavailable"
                    and r["attributes"].get("gatewatch.decision.result") == "error"} >= set(ids)

        assert otlp.data.wait_for(logged), "store_unavailable decisions not logged for every request"
    finally:
        redis.kill()


class _Jwks(BaseHTTPRequestHandler):
    doc: dict = {}

    def do_GET(self):  # noqa: N802
        body = json.dumps(self.doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_jwks_endpoint_going_down(cluster):
    _Jwks.doc = {"keys": [jwk("r1")]}
    idp = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{idp.server_address[1]}/jwks"
    backend = cluster.backend("b1")
    route = {"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "pool", "policies": [
        {"name": "auth", "type": "jwt", "issuer": ISS, "audience": AUD, "algorithms": ["RS256", "ES256"],
         "jwks": {"url": url, "refresh_s": 1, "min_refresh_interval_s": 0.5, "timeout_s": 0.5}}]}
    gw = cluster.gatewatch("gw", gatewatch_cfg(backend, [route]))
    base = f"http://{gw.listener('public')}/api/x"
    try:
        assert get(base, {"Authorization": f"Bearer {token('RS256', 'r1')}"})[0] == 200
    finally:
        idp.shutdown()
        idp.server_close()
    import time

    time.sleep(1.2)  # past refresh_s: the next request triggers a refresh that fails
    for _ in range(2):
        assert get(base, {"Authorization": f"Bearer {token('RS256', 'r1')}"})[0] == 200  # stale-if-error
    status, headers, body = get(base, {"Authorization": f"Bearer {token('ES256', 'e1')}"})
    assert status == 401 and json.loads(body)["error"]["outcome"] == "denied_auth"
    assert "invalid_token" in headers["WWW-Authenticate"]

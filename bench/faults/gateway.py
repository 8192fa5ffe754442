"""Gatewatch under the soak: its config, its processes, and every worker's /metrics.

`config(...)` builds the file: `workers: 2`, a fixed admin port (worker i serves admin port + i, so a restarted
worker comes back on the same admin port), OTLP http/protobuf to the soak's sink, four edge routes on one pool of
instances with active health checks, outlier detection and retries:

    plain    /plain/...    no policy but `headers` (sets X-Soak-Gen: the config generation, echoed by the backends)
    limited  /limited/...  rate_limit on X-Client in Redis, on_error: open  (the `hot` client is over its limit)
    quota    /quota/...    rate_limit on X-Client in Redis, on_error: closed (nobody is over the limit)
    secure   /secure/...   jwt, RS256, keys from the soak's JWKS endpoint (refreshed every few seconds)

`Gateway` starts it (`python -m gatewatch run -c FILE --ready-file F`, this tree first on PYTHONPATH), finds its
processes (supervisor, the current worker of each index, their exporter children) and rewrites the file with a
new generation for a reload. `scrape(admin)` reads one worker's /metrics into the few numbers the soak needs.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness.common import HTTP
from harness.procs import Proc

ROUTE_TIMEOUTS = {"connect_s": 0.5, "response_s": 2.0, "idle_s": 2.0}
RETRIES = {"attempts": 3, "retry_on": ["connect_failure", "reset", "timeout"], "per_try_timeout_s": 1.0,
           "deadline_s": 2.5}
REDIS_TIMEOUT_S = 0.1
JWKS_TIMEOUT_S = 1.0
HOT_LIMIT = 10  # requests per second for each X-Client on `limited` (the `hot` client sends about 3x that)


def config(gen: int, admin_port: int, sink_port: int, redis_url: str, jwks_url: str, backends: list[tuple[str, int]],
           workdir: Path) -> dict:
    def gen_policy() -> dict:
        return {"name": "gen", "type": "headers", "set": {"X-Soak-Gen": str(gen)}}

    def redis(on_error: str) -> dict:
        return {"url": redis_url, "timeout_s": REDIS_TIMEOUT_S, "on_error": on_error, "retry_after_s": 1.0}

    def route(name: str, policies: list[dict]) -> dict:
        return {"name": name, "match": {"path": {"prefix": f"/{name}"}}, "upstream": "shop",
                "timeouts": ROUTE_TIMEOUTS, "retries": RETRIES, "policies": policies + [gen_policy()]}

    from .jwks import AUDIENCE, ISSUER

    return {
        "workers": 2,
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "telemetry": {"service_name": "gatewatch-soak", "local_dir": str(workdir / "jsonl"),
                      "otlp": {"endpoint": f"http://127.0.0.1:{sink_port}", "protocol": "http/protobuf",
                               "timeout_s": 2.0}},
        "edge": {
            "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
            "routes": [
                route("plain", []),
                route("limited", [{"name": "per-client", "type": "rate_limit", "key": "header", "header": "X-Client",
                                   "limit": HOT_LIMIT, "window_s": 1, "store": "redis", "redis": redis("open")}]),
                route("quota", [{"name": "quota", "type": "rate_limit", "key": "header", "header": "X-Client",
                                 "limit": 100000, "window_s": 1, "store": "redis", "redis": redis("closed")}]),
                route("secure", [{"name": "auth", "type": "jwt", "algorithms": ["RS256"], "issuer": ISSUER,
                                  "audience": AUDIENCE,
                                  "jwks": {"url": jwks_url, "refresh_s": 3, "min_refresh_interval_s": 1,
                                           "timeout_s": JWKS_TIMEOUT_S}}]),
            ],
        },
        "balancer": {"pools": [{
            "name": "shop", "algorithm": "round_robin",
            "instances": [{"id": ident, "host": "127.0.0.1", "port": port} for ident, port in backends],
            "health_check": {"path": "/healthz", "interval_s": 1.0, "timeout_s": 0.5, "jitter_s": 0.1,
                             "unhealthy_threshold": 2, "healthy_threshold": 2},
            "outlier_detection": {"consecutive_gateway_errors": 3, "consecutive_5xx": 5, "base_ejection_s": 5,
                                  "max_ejection_s": 30, "max_ejection_percent": 50},
        }]},
    }


def timeout_bounds() -> dict[str, float]:
    """Per route, the longest a request may take by its config: policy waits + every attempt's connect_s +
    the retries' deadline_s (which covers every response-head wait and backoff; docs/configuration.md#retries)."""
    base = RETRIES["attempts"] * ROUTE_TIMEOUTS["connect_s"] + RETRIES["deadline_s"]
    redis_wait = 3 * REDIS_TIMEOUT_S  # a free connection (timeout_s), then connect + command (2 x timeout_s)
    return {"plain": base, "limited": base + redis_wait, "quota": base + redis_wait, "secure": base + JWKS_TIMEOUT_S}


class Gateway:
    def __init__(self, workdir: Path, env: dict[str, str], admin_port: int, make_config):
        self.workdir = workdir
        self.env = env
        self.admin_port = admin_port
        self.make_config = make_config  # gen -> config dict
        self.path = workdir / "gatewatch.yaml"
        self.gen = 0
        self.proc: Proc | None = None
        self.info: dict = {}

    @property
    def admins(self) -> list[str]:
        return [f"127.0.0.1:{self.admin_port + i}" for i in range(2)]

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.info["listeners"]["public"].rpartition(":")
        return host, int(port)

    def write_config(self, gen: int) -> None:
        self.gen = gen
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.make_config(gen), indent=1))  # JSON is YAML
        tmp.replace(self.path)  # atomic: a reload never reads half a file

    def start(self) -> None:
        self.write_config(1)
        ready = self.workdir / "gatewatch.ready.json"
        self.proc = Proc("gatewatch", [sys.executable, "-m", "gatewatch", "run", "-c", str(self.path),
                                       "--ready-file", str(ready)], self.workdir, env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if not self.proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gatewatch did not become ready:\n{self.proc.log_text()[-3000:]}")
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())

    def workers(self) -> dict[int, Any]:
        """The live worker process of each index (psutil), found among the supervisor's children."""
        import psutil

        out = {}
        try:
            children = self.proc.ps.children()
        except psutil.NoSuchProcess:
            return out
        for c in children:
            try:
                argv = c.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "--worker" in argv:
                out[int(argv[argv.index("--worker") + 1])] = c
        return out

    def processes(self) -> dict[int, tuple[str, Any]]:
        """pid -> (role, psutil process) for the supervisor, every worker and every exporter child."""
        import psutil

        out = {self.proc.pid: ("supervisor", self.proc.ps)}
        for i, w in self.workers().items():
            out[w.pid] = (f"worker-{i}", w)
            try:
                for c in w.children():
                    out[c.pid] = (f"exporter-{i}", c)
            except psutil.NoSuchProcess:
                pass
        return out

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""


def post(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with HTTP.open(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout_s) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def get_json(url: str, timeout_s: float = 2.0) -> dict | None:
    try:
        with HTTP.open(url, timeout=timeout_s) as r:
            return json.loads(r.read())
    except (OSError, ValueError):  # not up (yet), or draining: the caller retries or records it
        return None


def scrape(admin: str, timeout_s: float = 2.0) -> dict | None:
    """The numbers the soak reads from one worker's /metrics, or None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with HTTP.open(f"http://{admin}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except (OSError, ValueError):  # a worker that is not up (restarting) or has closed its admin listener
        return None
    m: dict[str, Any] = {"time": time.monotonic(), "exported": collections.Counter(), "dropped": collections.Counter(),
                         "queue": collections.Counter(), "server": collections.Counter(), "client": 0,
                         "decisions": 0, "decisions_by": collections.Counter(), "verdicts": collections.Counter(),
                         "reloads": collections.Counter(), "health_transitions": 0, "ejections": 0,
                         "store_up": {}, "endpoints": {}, "start_time": None, "rss": None}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            n, lb, v = s.name, s.labels, s.value
            if n == "gatewatch_telemetry_exported_total":
                m["exported"][lb.get("signal", "")] += v
            elif n == "gatewatch_telemetry_dropped_total":
                m["dropped"][f"{lb.get('signal', '')}/{lb.get('reason', '')}"] += v
            elif n == "gatewatch_telemetry_queue_items":
                m["queue"][lb.get("signal", "")] += v
            elif n == "http_server_request_duration_seconds_count":
                m["server"][f"{lb.get('gatewatch_route', '')}|{lb.get('gatewatch_outcome', '')}|"
                            f"{lb.get('http_response_status_code', '')}|{lb.get('error_type', '')}"] += v
            elif n == "http_client_request_duration_seconds_count":
                m["client"] += v
            elif n == "gatewatch_decisions_total":
                m["decisions"] += v
                m["decisions_by"][f"{lb.get('decision', '')}/{lb.get('result', '')}/{lb.get('reason', '')}"] += v
            elif n == "gatewatch_policy_verdicts_total":
                if v:
                    m["verdicts"][f"{lb.get('gatewatch_policy', '')}/{lb.get('verdict', '')}/"
                                  f"{lb.get('reason', '')}"] += v
            elif n == "gatewatch_config_reloads_total":
                m["reloads"][lb.get("result", "")] += v
            elif n == "gatewatch_health_transitions_total":
                m["health_transitions"] += v
            elif n == "gatewatch_ejections_total":
                m["ejections"] += v
            elif n == "gatewatch_ratelimit_store_up":
                m["store_up"][lb.get("store", "")] = v
            elif n == "gatewatch_endpoints":
                m["endpoints"][lb.get("state", "")] = m["endpoints"].get(lb.get("state", ""), 0) + v
            elif n == "process_start_time_seconds":
                m["start_time"] = v
            elif n == "process_resident_memory_bytes":
                m["rss"] = v
    return m

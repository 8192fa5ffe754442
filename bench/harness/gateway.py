"""Gatewatch as the proxy under test: `make_routes` and `Gateway.config` build a case's config, `Gateway.start`
runs it from this tree (`python -m gatewatch run -c CONFIG --ready-file FILE`, the repository first on
PYTHONPATH, see `Context.child_env`), `scrape` reads its /metrics and `settle` waits until the telemetry of a
run has been exported.

`Gateway` also keeps what the run learns about the gateway: how telemetry is turned off (`off_mode`), and the
hash of the sources each process was started from. A `pure` case runs with GATEWATCH_PURE_PYTHON=1, a compiled one
without it; the mode the process really ran in is its ready file's `build` (`build_check` compares them). In the TLS cases its listener terminates TLS with the run's
certificate (tls.py) and every other listener setting is the default.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

from .cases import Case
from .common import HTTP, PATH
from .context import Context
from .host import source_hash
from .peers import Backend
from .procs import Proc, wait_http
from .sink import Sink
from .targets import Target
from .tls import https_opener, server_env

_TELEMETRY_ENV = {  # how each telemetry setting is asked for, as a user would
    "off": {"OTEL_SDK_DISABLED": "true"},
    "sampled": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}


def make_routes(n: int, upstream: str = "backend") -> list[dict]:
    """n routes of mixed kinds; the one that matches PATH (a template) sits near the end of the list."""
    if n <= 1:
        return [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": upstream}]
    target = n - max(2, n // 100)  # 10 routes → index 8; 1000 → index 990
    routes = []
    for i in range(n):
        if i == target:
            path = {"template": "/bench/items/{id}"}
        elif i % 4 == 0:
            path = {"prefix": f"/svc{i}"}
        elif i % 4 == 1:
            path = {"template": f"/svc{i}/orders/{{id}}"}
        elif i % 4 == 2:
            path = {"template": f"/bench/items/{{id}}/v{i}"}  # shares the first two segments with PATH
        else:
            path = {"prefix": f"/bench/x{i}"}
        routes.append({"name": f"r{i:04d}", "match": {"path": path}, "upstream": upstream})
    return routes


class Gateway:
    def __init__(self, ctx: Context, backend: Backend, sink: Sink):
        self.ctx = ctx
        self.backend = backend
        self.sink = sink
        self.off_mode = "OTEL_SDK_DISABLED=true"
        self.off_fallback = False  # True once OTEL_SDK_DISABLED=true turned out not to disable telemetry
        self.source_hashes: set[str] = set()
        self.last_source_hash: str | None = None

    def config(self, case: Case) -> dict:
        n = max(1, case.pool)
        ports = self.backend.pool_ports(n)
        weighted = case.algorithm == "weighted_round_robin"
        instances = [{"id": f"i{k:04d}", "host": "127.0.0.1", "port": ports[k],
                      **({"weight": k % 3 + 1} if weighted else {})} for k in range(n)]
        telemetry: dict[str, Any] = {"service_name": "gatewatch-bench", "local_dir": str(self.ctx.workdir / "jsonl")}
        if self.sink.endpoint:
            telemetry["otlp"] = {"endpoint": self.sink.endpoint, "protocol": "http/protobuf"}
        if case.telemetry == "off" and self.off_fallback:
            telemetry["sampling"] = {"ratio": 0.0}
        listener: dict[str, Any] = {"name": "public", "address": "127.0.0.1:0"}
        if case.tls != "off":
            tls = self.ctx.tls
            listener["tls"] = {"certificates": [{"cert_file": str(tls.cert), "key_file": str(tls.key)}]}
        return {
            **({"workers": case.workers} if case.workers > 1 else {}),
            "admin": {"address": "127.0.0.1:0"},
            "telemetry": telemetry,
            "edge": {"listeners": [listener],
                     "routes": make_routes(case.routes)},
            "balancer": {"pools": [{"name": "backend", "algorithm": case.algorithm, "instances": instances}]},
        }

    def start(self, case: Case, rnd: int) -> Target:
        ctx = self.ctx
        name = ctx.next_name(f"gw-{case.name}")
        cfg_path = ctx.workdir / f"{name}.yaml"
        cfg_path.write_text(json.dumps(self.config(case), indent=1))  # JSON is YAML
        ready = ctx.workdir / f"{name}.ready.json"
        env = ctx.child_env(pure=case.build == "pure")
        env.update(_TELEMETRY_ENV.get(case.telemetry, {}))
        env.update(server_env(case, ctx.tls))
        self.last_source_hash = source_hash()
        self.source_hashes.add(self.last_source_hash)
        p = Proc(name, (ctx.taskset(ctx.proxy_cpu) if case.pinned else ctx.every_cpu()) + [
            sys.executable, "-m", "gatewatch", "run", "-c", str(cfg_path), "--ready-file", str(ready)],
            ctx.workdir, env=env, cwd=ctx.workdir)
        info = _wait_ready(case, p, ready)
        if case.tls != "off":
            url = f"https://{info['listeners']['public']}{PATH}"
            wait_http(url, p, opener=https_opener(ctx.tls))
        else:
            url = f"http://{info['listeners']['public']}{PATH}"
            wait_http(url, p)
        if case.telemetry == "off" and "disabled" not in str(info.get("telemetry", "")) and not self.off_fallback:
            self._fall_back(info)
            p.stop()
            return self.start(case, rnd)
        admins = [w["admin"] for w in info.get("workers") or []] or [info["admin"]]
        t = Target(url=url, procs=[p], cpu_procs=p.tree, admin=admins, info=info)
        if case.tls != "off":
            t.handshakes = lambda: scrape(admins)["tls_handshakes"]
        return t

    def _fall_back(self, info: dict) -> None:
        """OTEL_SDK_DISABLED=true did not disable telemetry: turn it off with sampling ratio 0 from now on."""
        self.off_fallback = True
        self.off_mode = "telemetry.sampling.ratio: 0 (OTEL_SDK_DISABLED=true did not disable export)"
        self.ctx.notes.append(f"OTEL_SDK_DISABLED=true did not report telemetry as disabled "
                              f"({info.get('telemetry')!r}); telemetry-off cases use sampling.ratio 0 from now on")


def _wait_ready(case: Case, p: Proc, ready: Path) -> dict:
    """The ready file's contents (listeners, admin address, workers, telemetry state) once gatewatch wrote it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ready.exists():
            break
        if not p.alive():
            raise RuntimeError(f"gatewatch ({case.name}) exited {p.popen.returncode} before ready:\n"
                               f"{p.log_text()[-3000:]}")
        time.sleep(0.05)
    else:
        raise RuntimeError(f"gatewatch ({case.name}) not ready in 60s:\n{p.log_text()[-3000:]}")
    return json.loads(ready.read_text())


def build_check(case: Case, info: dict) -> tuple[dict[str, Any], str | None]:
    """The mode a gatewatch process ran in (its ready file's `build`: gatewatch/build_mode.py `BuildState`) and,
    when it is not the case's, the problem: a `compiled` row that ran pure or partly compiled (a pure install, a
    stale module after an edit) measures something else, and so does a `pure` row that ran compiled."""
    b = info.get("build")
    if not isinstance(b, dict) or "compiled" not in b:
        return ({"expected": case.build, "compiled": None, "mode": "unknown: the ready file has no `build`"},
                f"BUILD UNKNOWN: the ready file says nothing about the build; {case.build} not verified")
    got = {"expected": case.build, "compiled": bool(b["compiled"]), "mode": str(b.get("mode", "")),
           **({"stale": b["stale"]} if b.get("stale") else {})}
    if case.build == "compiled" and not b["compiled"]:
        return got, (f"BUILD MISMATCH: a compiled case ran {got['mode']!r}: its figures are not the compiled "
                     f"build's (rebuild with pip install -e .)")
    if case.build == "pure" and (b["compiled"] or not got["mode"].startswith("pure")):
        return got, f"BUILD MISMATCH: a pure case (GATEWATCH_PURE_PYTHON=1) ran {got['mode']!r}"
    return got, None


def scrape(admins: list[str]) -> dict[str, Any]:
    """Telemetry, request and TLS handshake counters from gatewatch's /metrics, summed over its workers."""
    from prometheus_client.parser import text_string_to_metric_families

    texts = []
    for admin in admins:
        with HTTP.open(f"http://{admin}/metrics", timeout=5) as r:
            texts.append(r.read().decode())
    exported: dict[str, float] = collections.Counter()
    dropped: dict[str, float] = collections.Counter()
    queue = 0.0
    outcomes: dict[str, float] = collections.Counter()
    requests = 0.0
    handshakes = 0.0
    for fam in (f for text in texts for f in text_string_to_metric_families(text)):
        for s in fam.samples:
            if s.name == "gatewatch_telemetry_exported_total":
                exported[s.labels.get("signal", "")] += s.value
            elif s.name == "gatewatch_telemetry_dropped_total":
                dropped[f"{s.labels.get('signal', '')}/{s.labels.get('reason', '')}"] += s.value
            elif s.name == "gatewatch_telemetry_queue_items":
                queue += s.value
            elif s.name == "http_server_request_duration_seconds_count":
                outcomes[f"{s.labels.get('gatewatch_outcome', '')}/{s.labels.get('http_response_status_code', '')}"] \
                    += s.value
                requests += s.value
            elif s.name == "gatewatch_tls_handshakes_total":
                handshakes += s.value
    return {"exported": dict(exported), "dropped": dict(dropped), "queue_items": queue,
            "requests_by_outcome": dict(outcomes), "requests": requests, "tls_handshakes": handshakes}


def settle(t: Target, sink: Sink, timeout_s: float = 20.0) -> tuple[dict | None, dict | None, bool]:
    """Wait until gatewatch's telemetry queues are empty and exports and the sink's counts stop moving."""
    if not t.admin:
        return None, None, True
    deadline = time.monotonic() + timeout_s
    last = None
    stable = 0
    m = s = None
    while time.monotonic() < deadline:
        m = scrape(t.admin)
        s = sink.status() if sink.proc else None
        key = (sum(m["exported"].values()), sum(m["dropped"].values()),
               (s or {}).get("spans"), (s or {}).get("logs"))
        if m["queue_items"] == 0 and key == last:
            stable += 1
            if stable >= 2:
                return m, s, True
        else:
            stable = 0
        last = key
        time.sleep(0.3)
    return m, s, False

"""`gatewatch demo`: the two-tier pattern on one machine, with traffic and a live terminal summary.

Processes (each a real `gatewatch` CLI process, so the demo shows exactly what a deployment runs):
    traffic (this process) → edge (gatewatch run) → balancer (gatewatch run) → 3 × demo backend
The backends sit in two zones: zone-a (demo-a, demo-b) takes traffic, zone-b (demo-c, slower) is the failover
priority. Every `INCIDENT_EVERY_S` the demo kills demo-b and restarts it `INCIDENT_DOWN_S` later, so ejection,
failover to zone-b, health transitions, retries and slow start happen while you watch. The summary reads the edge's and the balancer's own
`/metrics` (so what you see is what Prometheus would see) and the `traceresponse` header of answers.
Children run in their own sessions and are always stopped in order (edge, balancer, backends) on exit or
Ctrl-C, so nothing is orphaned and every tier flushes its telemetry.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gatewatch.telemetry.names import Label, Metric

BACKENDS = (("demo-a", "zone-a", 5.0, 10.0), ("demo-b", "zone-a", 5.0, 10.0), ("demo-c", "zone-b", 60.0, 60.0))
PRIORITY = {"zone-a": 0, "zone-b": 1}
INCIDENT_EVERY_S = 45.0  # first at 20 s, then every 45 s
INCIDENT_FIRST_S = float(os.environ.get("GATEWATCH_DEMO_INCIDENT_AT", "20"))
INCIDENT_DOWN_S = 12.0


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Child:
    def __init__(self, name: str, argv: list[str], workdir: Path):
        self.name = name
        self.argv = argv
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, "--ready-file", str(self.ready_file), stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)

    async def ready(self, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return json.loads(self.ready_file.read_text())
            if self.proc and self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise RuntimeError(f"{self.name} did not become ready; its log ends with:\n{tail}")

    async def stop(self, timeout_s: float = 8.0) -> None:
        if not self.proc or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "gatewatch", *args]


def balancer_config(backends: list[dict]) -> dict:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"service_name": "gatewatch-balancer"},
        "balancer": {
            "listeners": [{"name": "internal", "address": "127.0.0.1:0", "trust_forwarded_headers": True,
                           "trace_response_header": False}],
            "routes": [{"name": "shop", "match": {"path": {"prefix": "/"}}, "upstream": "shop",
                        "timeouts": {"connect_s": 1, "response_s": 5, "idle_s": 10}}],
            "pools": [{"name": "shop", "algorithm": "weighted_round_robin", "instances": [
                {"id": b["id"], "zone": b["zone"], "host": "127.0.0.1", "port": b["port"], "weight": b["weight"],
                 "priority": PRIORITY[b["zone"]]} for b in backends],
                "health_check": {"path": "/healthz", "interval_s": 1, "jitter_s": 0.2, "timeout_s": 0.5,
                                 "healthy_threshold": 2, "unhealthy_threshold": 2},
                "outlier_detection": {"consecutive_gateway_errors": 3, "base_ejection_s": 10},
                "slow_start": {"window_s": 10}}],
        },
    }


def edge_config(edge_port: int, balancer_url: str) -> dict:
    timeouts = {"connect_s": 1, "response_s": 8, "idle_s": 10}
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"service_name": "gatewatch-edge"},
        "edge": {
            "listeners": [{"name": "public", "address": f"127.0.0.1:{edge_port}"}],
            "routes": [
                {"name": "orders", "match": {"path": {"template": "/api/orders/{id}"}, "methods": ["GET"]},
                 "upstream": "shop-tier", "timeouts": timeouts},
                {"name": "checkout", "match": {"path": {"exact": "/api/checkout"}, "methods": ["POST"]},
                 "upstream": "shop-tier", "timeouts": timeouts},
                {"name": "catalog", "match": {"path": {"prefix": "/api/catalog"}}, "upstream": "shop-tier",
                 "rewrite": {"strip_prefix": "/api"}, "timeouts": timeouts},
            ],
            "upstreams": [{"name": "shop-tier", "url": balancer_url}],
        },
    }


INCIDENT_LOG: list[str] = []


async def _incidents(victim: "Child", port: int, workdir: Path, stop: asyncio.Event, started: float) -> None:
    """Kill demo-b (like a crash: no goodbye) and restart it on the same port, on a schedule."""
    next_at = started + INCIDENT_FIRST_S
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            return
        except asyncio.TimeoutError:
            pass
        victim.proc.kill()
        await victim.proc.wait()
        t = time.monotonic() - started
        INCIDENT_LOG.append(f"demo-b killed at {t:.0f}s; restarts at {t + INCIDENT_DOWN_S:.0f}s")
        try:
            await asyncio.wait_for(stop.wait(), INCIDENT_DOWN_S)
            return
        except asyncio.TimeoutError:
            pass
        if "--listen" not in victim.argv:  # the same port: the balancer's config names it
            victim.argv = victim.argv + ["--listen", f"127.0.0.1:{port}"]
        victim.ready_file.unlink(missing_ok=True)
        await victim.start()
        await victim.ready()
        INCIDENT_LOG.append(f"demo-b restarted at {time.monotonic() - started:.0f}s (watch it come back through "
                            "slow start)")
        next_at = time.monotonic() + INCIDENT_EVERY_S


async def _pools(session: aiohttp.ClientSession, admin: str) -> dict:
    try:
        async with session.get(f"http://{admin}/upstreams") as r:
            return (await r.json())["pools"]
    except (aiohttp.ClientError, KeyError, ValueError):
        return {}


async def _scrape(session: aiohttp.ClientSession, admin: str) -> dict[str, list]:
    try:
        async with session.get(f"http://{admin}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return {}
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = fam.samples
    return out


def _counts(samples: list, name: str, by: tuple[str, ...]) -> dict[tuple, float]:
    out: dict[tuple, float] = collections.Counter()
    for s in samples or ():
        if s.name == name:
            out[tuple(s.labels.get(k, "") for k in by)] += s.value
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


class Traffic:
    def __init__(self, base: str, rps: float, rng: random.Random):
        self.base = base
        self.rps = rps
        self.rng = rng
        self.latencies: collections.deque[float] = collections.deque(maxlen=5000)
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors = 0
        self.trace_ids: collections.deque[str] = collections.deque(maxlen=5)
        self.sent = 0

    def next_request(self) -> tuple[str, str, bytes | None]:
        x = self.rng.random()
        if x < 0.55:
            return "GET", f"/api/orders/{self.rng.randint(1, 9999)}", None
        if x < 0.80:
            return "GET", f"/api/catalog/items/{self.rng.choice(['shoes', 'hats', 'socks'])}", None
        if x < 0.95:
            return "POST", "/api/checkout", json.dumps({"cart": self.rng.randint(1, 500)}).encode()
        return "GET", "/api/unknown", None

    async def one(self, session: aiohttp.ClientSession) -> None:
        method, path, body = self.next_request()
        t0 = time.monotonic()
        try:
            async with session.request(method, self.base + path, data=body,
                                       timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
                self.statuses[r.status] += 1
                tr = r.headers.get("traceresponse")
                if tr and r.status == 200:
                    self.trace_ids.append(tr.split("-")[1])
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.errors += 1
        self.latencies.append(time.monotonic() - t0)

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1.0 / self.rps if self.rps > 0 else 1.0
        tasks: set[asyncio.Task] = set()
        async with aiohttp.ClientSession() as session:
            next_at = time.monotonic()
            while not stop.is_set():
                if len(tasks) < 64:
                    t = asyncio.create_task(self.one(session))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    self.sent += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks, timeout=10)


def render(elapsed: float, traffic: Traffic, edge: dict, bal: dict, edge_url: str, dest: str,
           pools: dict | None = None, incident: str = "") -> str:
    lines = [f"gatewatch demo — {elapsed:5.1f}s — edge {edge_url} — telemetry: {dest}", ""]
    for name, pool in (pools or {}).items():
        states = ", ".join(f"{i['id']} {i['state']}" + (f" (slow start {i['slow_start_ratio']:.0%})"
                                                        if i["slow_start_ratio"] < 1 else "")
                           for i in pool["instances"])
        lines.append(f"pool {name}: priority {pool['active_priority']} takes traffic"
                     f"{' — PANIC' if pool['panic'] else ''}; {states}")
    if incident:
        lines.append(f"incident: {incident}")
    if pools or incident:
        lines.append("")
    by_route = _counts(edge.get(Metric.SERVER_DURATION), Metric.SERVER_DURATION + "_count",
                       (Label.ROUTE, Label.OUTCOME))
    lines.append("requests per route (edge /metrics)          outcome")
    for (route, outcome), n in sorted(by_route.items()):
        lines.append(f"  {route or '(no route)':<40} {outcome:<22} {int(n):>7}")
    by_inst = _counts(bal.get(Metric.CLIENT_DURATION), Metric.CLIENT_DURATION + "_count",
                      (Label.INSTANCE, Label.OUTCOME))
    sums = _counts(bal.get(Metric.CLIENT_DURATION), Metric.CLIENT_DURATION + "_sum", (Label.INSTANCE, Label.OUTCOME))
    lines += ["", "requests per instance (balancer /metrics)   outcome                 count  mean ms"]
    for (inst, outcome), n in sorted(by_inst.items()):
        mean = 1000 * sums.get((inst, outcome), 0) / n if n else 0
        lines.append(f"  {inst:<40} {outcome:<22} {int(n):>7} {mean:8.1f}")
    lat = list(traffic.latencies)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(traffic.statuses.items()))
    lines += ["", f"client view: {traffic.sent} sent, statuses {{{statuses}}}, transport errors {traffic.errors}",
              f"latency through both tiers: p50 {1000 * _pct(lat, 0.5):.1f} ms, p99 {1000 * _pct(lat, 0.99):.1f} ms",
              "recent trace ids: " + (", ".join(traffic.trace_ids) or "-")]
    return "\n".join(lines)


async def _demo(duration_s: float | None, rps: float, workdir: Path, edge_port: int) -> int:
    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        backends = []
        for bid, zone, delay, jitter in BACKENDS:
            c = Child(bid, _cli("backend", "--id", bid, "--zone", zone, "--delay-ms", str(delay), "--jitter-ms",
                                str(jitter)), workdir)
            children.append(c)
            await c.start()
        for c, (bid, zone, _, _) in zip(list(children), BACKENDS):
            info = await c.ready()
            backends.append({"id": bid, "zone": zone, "port": int(info["address"].rsplit(":", 1)[1]),
                             "weight": 2 if bid == "demo-a" else 1})
        (workdir / "balancer.yaml").write_text(json.dumps(balancer_config(backends), indent=2))
        bal = Child("balancer", _cli("run", "-c", str(workdir / "balancer.yaml")), workdir)
        children.append(bal)
        await bal.start()
        bal_info = await bal.ready()
        bal_addr = bal_info["listeners"]["internal"]
        port = edge_port if edge_port and _free(edge_port) else 0
        (workdir / "edge.yaml").write_text(json.dumps(edge_config(port, f"http://{bal_addr}"), indent=2))
        edge = Child("edge", _cli("run", "-c", str(workdir / "edge.yaml")), workdir)
        children.append(edge)
        await edge.start()
        edge_info = await edge.ready()
        edge_url = f"http://{edge_info['listeners']['public']}"
        dest = edge_info["telemetry"]
        print(f"demo: backends {', '.join(b['id'] for b in backends)}; balancer {bal_addr}; edge {edge_url}; "
              f"admin: edge {edge_info['admin']}, balancer {bal_info['admin']}; configs and logs in {workdir}",
              flush=True)
        traffic = Traffic(edge_url, rps, random.Random())
        traffic_task = asyncio.create_task(traffic.run(stop))
        started = time.monotonic()
        victim = next(c for c in children if c.name == "demo-b")
        victim_port = next(b["port"] for b in backends if b["id"] == "demo-b")
        incident_task = asyncio.create_task(_incidents(victim, victim_port, workdir, stop, started))
        tty = sys.stdout.isatty()
        async with aiohttp.ClientSession() as session:
            last_print = 0.0
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                elapsed = time.monotonic() - started
                if duration_s is not None and elapsed >= duration_s:
                    stop.set()
                if tty or elapsed - last_print >= 5 or stop.is_set():
                    last_print = elapsed
                    if stop.is_set():
                        await traffic_task
                        await asyncio.sleep(0.2)
                    e, b = await _scrape(session, edge_info["admin"]), await _scrape(session, bal_info["admin"])
                    pools = await _pools(session, bal_info["admin"])
                    text = render(elapsed, traffic, e, b, edge_url, dest, pools, INCIDENT_LOG[-1] if INCIDENT_LOG else "")
                    if tty and not stop.is_set():
                        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n\n(Ctrl-C to stop)\n")
                    else:
                        sys.stdout.write(("\nfinal summary\n" if stop.is_set() else "\n") + text + "\n")
                    sys.stdout.flush()
        await traffic_task
        incident_task.cancel()
        await asyncio.gather(incident_task, return_exceptions=True)
        return 0
    finally:
        for c in reversed(children):  # edge first, then balancer, then backends: each flushes its telemetry
            await c.stop()


def run_demo(duration_s: float | None = None, rps: float = 40.0, workdir: str | None = None,
             edge_port: int = 8080) -> int:
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="gatewatch-demo-")
        workdir = tmp
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        try:
            import uvloop

            return uvloop.run(_demo(duration_s, rps, path, edge_port))
        except ImportError:
            return asyncio.run(_demo(duration_s, rps, path, edge_port))
    except RuntimeError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    finally:
        if tmp and os.environ.get("GATEWATCH_DEMO_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)

#!/usr/bin/env python3
"""Gatewatch benchmark harness (issue 3): gatewatch against HAProxy and nginx on the same backend, same load.

    python bench/run.py [--quick] [--out FILE.json] [--cases CASE ...]

Starts an nginx backend (a fixed 2-byte "ok", keep-alive, 1 worker), then, one at a time, each reference proxy
and each gatewatch variant, and drives them with `wrk -t1 -c32` (the latency cases with `-c1`). On a machine
with 2+ CPUs the proxy under test is pinned to the first CPU and wrk, the backend, the OTLP sink and this
harness to the second; with 1 CPU nothing is pinned and the output says so. Every case runs in every round,
rounds are interleaved (3 normally, 1 with --quick), each measurement follows a warm-up, and medians are
reported. See bench/README.md for what each case and ratio means.

Everything started here runs in its own process group and is stopped on exit, failure or Ctrl-C. Configs and
logs live in a temp dir (kept with --keep-tmp).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LUA = BENCH / "wrk_done.lua"
PATH = "/bench/items/42"  # the request path of every throughput case (direct, references and gatewatch)
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

# The targets of issue 3 (ratios measured in the same run).
TARGETS = {
    "off_vs_haproxy": (">=", 0.7),
    "full_vs_haproxy": (">=", 0.5),
    "full_vs_off": (">=", 0.75),
    "sampled_vs_off": (">=", 0.9),
    "added_latency_ms_p50": ("<=", 0.5),
    "routes_1000_vs_10": (">=", 0.9),
    "pool_1000_vs_3.round_robin": (">=", 0.9),
    "pool_1000_vs_3.weighted_round_robin": (">=", 0.9),
    "rss_kib_per_idle_conn": ("<=", 20.0),
}


# Never through an HTTP proxy from the environment: everything here is on the loopback.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Processes: every child in its own session (process group), tracked, always stopped.
# --------------------------------------------------------------------------------------------------------------

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _child_setup() -> None:
    """In the child before exec: die with the harness even if it is SIGKILLed (PR_SET_PDEATHSIG)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


RUNNING: list["Proc"] = []


class Proc:
    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, capture: bool = False):
        import psutil

        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self._log = None if capture else open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE if capture else self._log,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=str(cwd) if cwd else None, start_new_session=True, preexec_fn=_child_setup)
        try:
            self.ps = psutil.Process(self.popen.pid)
        except psutil.NoSuchProcess:
            self.ps = None
        self.stopped = False
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list:
        """The leader and its live descendants (psutil objects, which guard against pid reuse)."""
        import psutil

        if self.ps is None:
            return []
        try:
            return [self.ps] + self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 12.0) -> None:
        import psutil

        if self.stopped:
            return
        self.stopped = True
        tree = self.tree()
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)  # the leader is alive, so the group id is ours
            except (ProcessLookupError, PermissionError):
                pass
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for q in alive:
            try:
                q.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._log:
            self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)

    def log_text(self) -> str:
        if self._log and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def stop_all() -> None:
    for p in reversed(list(RUNNING)):
        try:
            p.stop(timeout_s=8.0)
        except Exception as err:  # keep stopping the others
            log(f"bench: could not stop {p.name}: {err}")


def run_capture(name: str, argv: list[str], workdir: Path, timeout_s: float) -> tuple[int, str, str]:
    p = Proc(name, argv, workdir, capture=True)
    try:
        out, err = p.popen.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.stop(2)
        raise RuntimeError(f"{name} did not finish within {timeout_s:.0f}s")
    finally:
        p.stopped = True
        if p in RUNNING:
            RUNNING.remove(p)
    return p.popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# --------------------------------------------------------------------------------------------------------------
# Setup: tools, limits, CPUs, ports, machine description.
# --------------------------------------------------------------------------------------------------------------

NOISY = 0.10  # other processes' CPU (in cores) during a run above which the row is flagged
LOAD_SATURATED = 0.97  # busy fraction of the load generator's CPU above which a proxy row is flagged

TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}


def which(binary: str) -> str | None:
    return shutil.which(binary, path=SBIN_PATH)


def ensure_tools() -> dict[str, str]:
    missing = sorted({pkg for b, pkg in TOOLS.items() if not which(b)})
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"bench: installing {' '.join(missing)} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")  # RUNLEVEL=1: no service start
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
            if r.returncode != 0:
                log(f"bench: apt-get install {' '.join(missing)} failed (exit {r.returncode})")
                sys.exit(2)
        else:
            log(f"bench: missing {', '.join(missing)}; install them (Debian: sudo apt-get install {' '.join(missing)})"
                f" or run this as root to let it install them")
            sys.exit(2)
    paths = {b: which(b) for b in TOOLS}
    still = [b for b, p in paths.items() if not p]
    if still:
        log(f"bench: still missing after install: {', '.join(still)}")
        sys.exit(2)
    return paths  # type: ignore[return-value]


def check_python_deps() -> None:
    missing = []
    for mod, pkg in (("psutil", "psutil"), ("prometheus_client", "prometheus-client"), ("grpc", "grpcio"),
                     ("opentelemetry.proto", "opentelemetry-proto"), ("aiohttp", "aiohttp")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        log(f"bench: missing Python packages: {', '.join(missing)}; run: pip install -e '.[test]'")
        sys.exit(2)


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_range(n: int) -> list[int]:
    """n consecutive free ports below the ephemeral range (so wrk's own client ports never collide)."""
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    rng = random.Random()
    candidates = list(range(10000, max(10001, lo - n - 1), 500))
    rng.shuffle(candidates)
    for base in candidates:
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no range of {n} free ports found")


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def tree_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    status = [ln for ln in git("status", "--porcelain").splitlines() if ln[3:].split("/")[0] != "bench"]
    return {"commit": git("rev-parse", "HEAD"), "dirty_outside_bench": status, "source_hash": source_hash()}


def source_hash() -> str:
    """Hash of the gateway's Python sources as they are on disk now (another engineer edits them meanwhile)."""
    h = hashlib.sha256()
    for d in ("gatewatch", "edge", "balancer", "telemetry"):
        for f in sorted((REPO / d).rglob("*.py")):
            try:
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
            except OSError:
                pass
    return h.hexdigest()[:16]


def machine(tools: dict[str, str]) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model, "cpu_count": os.cpu_count(), "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(), "os": platform.platform(), "python": sys.version.split()[0],
        "haproxy": _version([tools["haproxy"], "-v"]), "nginx": _version([tools["nginx"], "-v"]),
        "wrk": _version([tools["wrk"], "-v"]), "hostname": socket.gethostname(),
        "loadavg_at_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # direct | haproxy | nginx | gatewatch | idle
    conns: int = 32
    telemetry: str = "off"  # off | full | sampled (gatewatch only)
    routes: int = 1
    pool: int = 1
    algorithm: str = "round_robin"
    workers: int = 1  # gatewatch `workers: N`
    pinned: bool = True  # False: the proxy may run on every CPU (multi-core cases)


ALL_CASES = [
    Case("direct", "direct"),
    Case("haproxy", "haproxy"),
    Case("nginx", "nginx"),
    Case("python-floor", "floor"),
    Case("gatewatch-off", "gatewatch", telemetry="off"),
    Case("gatewatch-full", "gatewatch", telemetry="full"),
    Case("gatewatch-sampled", "gatewatch", telemetry="sampled"),
    Case("latency-1conn-direct", "direct", conns=1),
    Case("latency-1conn-full", "gatewatch", conns=1, telemetry="full"),
    Case("routes-10", "gatewatch", routes=10),
    Case("routes-1000", "gatewatch", routes=1000),
    Case("pool-3-round_robin", "gatewatch", pool=3, algorithm="round_robin"),
    Case("pool-1000-round_robin", "gatewatch", pool=1000, algorithm="round_robin"),
    Case("pool-3-weighted_round_robin", "gatewatch", pool=3, algorithm="weighted_round_robin"),
    Case("pool-1000-weighted_round_robin", "gatewatch", pool=1000, algorithm="weighted_round_robin"),
    # the reference on the same pools: what 1,000 distinct upstream addresses cost a proxy that is not Python
    Case("pool-3-haproxy", "haproxy", pool=3),
    Case("pool-1000-haproxy", "haproxy", pool=1000),
    # Multi-core (`workers: N`): the gateway may use both CPUs; wrk and the backend stay on the load CPU, so a
    # second worker can only add what the load CPU has left. Both cases unpinned, so the ratio is like for like.
    Case("workers-1", "gatewatch", workers=1, pinned=False),
    Case("workers-2", "gatewatch", workers=2, pinned=False),
    Case("idle-10k", "idle"),
]
CASE_NAMES = [c.name for c in ALL_CASES]


def _group(name: str) -> str | None:
    for g in ("pool", "routes", "latency", "workers"):
        if name.startswith(g):
            return g
    return None


def select_cases(wanted: list[str] | None) -> list[Case]:
    """Exact names, prefixes (`gatewatch`), or one member of a compared pair/group (`pool-1000` runs every pool
    case, `routes-1000` both route cases, `latency-1conn` both latency cases): a ratio needs both sides."""
    if not wanted:
        return list(ALL_CASES)
    chosen: set[str] = set()
    unknown = []
    for w in wanted:
        hits = [c.name for c in ALL_CASES if c.name == w or c.name.startswith(w + "-")
                or (_group(w) is not None and _group(c.name) == _group(w))]
        if not hits:
            unknown.append(w)
        chosen.update(hits)
    if unknown:
        log(f"bench: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASE_NAMES)}")
        sys.exit(2)
    return [c for c in ALL_CASES if c.name in chosen]


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


# --------------------------------------------------------------------------------------------------------------
# Configs of the backend and the references
# --------------------------------------------------------------------------------------------------------------

def nginx_temp_paths(d: Path) -> str:
    return "\n".join(f"  {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def backend_conf(d: Path, ports: list[int], nofile: int) -> str:
    listens = "\n".join(f"    listen 127.0.0.1:{p}{' backlog=4096' if i == 0 else ''};" for i, p in enumerate(ports))
    return f"""# the benchmark's backend: a fixed 2-byte answer, keep-alive, one worker
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {max(1024, nofile // 2)}; }}
http {{
  access_log off;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  default_type text/plain;
{nginx_temp_paths(d)}
  server {{
{listens}
    location / {{ return 200 "ok"; }}
    location = /__bench_status {{ stub_status; }}
  }}
}}
"""


def nginx_proxy_conf(d: Path, port: int, backend_port: int, nofile: int) -> str:
    return f"""# reference: nginx proxy_pass, 1 worker, keep-alive to the backend
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {max(1024, nofile // 2)}; }}
http {{
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
{nginx_temp_paths(d)}
  upstream backend {{
    server 127.0.0.1:{backend_port};
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


def haproxy_conf(port: int, backend_ports: list[int]) -> str:
    servers = "\n".join(f"    server s{k} 127.0.0.1:{p}" for k, p in enumerate(backend_ports))
    return f"""# reference: HAProxy, one thread, HTTP mode, keep-alive and connection reuse to the backend
global
    nbthread 1

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    balance roundrobin
{servers}
"""


# --------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------

def cpu_seconds(procs: list) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def percpu_busy() -> list[tuple[float, float]]:
    import psutil

    out = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        out.append((total - idle, total))
    return out


def busy_fraction(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    return [round((b1 - a1) / (bt - at), 3) if bt > at else 0.0 for (a1, at), (b1, bt) in zip(a, b)]


def process_name(cmd: list[str], fallback: str) -> str:
    """A gatewatch process by the module it runs (`gatewatch` for the proxy itself, its exporter child by its
    module path), anything else by its executable."""
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1].startswith("gatewatch"):
        return cmd[cmd.index("-m") + 1]
    return fallback


def cpu_by_process(procs: list) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for p in procs:
        try:
            t = p.cpu_times()
            cmd = p.cmdline()
            name = process_name(cmd, p.name())
            out[name] = out.get(name, 0.0) + t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def proc_affinities(procs: list) -> list[dict]:
    import psutil

    out = []
    for p in procs:
        try:
            cmd = p.cmdline()
            name = process_name(cmd, p.name())
            out.append({"pid": p.pid, "name": name, "cpus": sorted(p.cpu_affinity())})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def other_cpu_snapshot(ours: set[int]) -> dict[tuple[int, float], float]:
    """CPU seconds of every user-space process that is not ours (not the harness, nor anything it started)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "ppid", "create_time", "cpu_times"]):
        i = p.info
        if i["pid"] in ours or i["pid"] == 2 or i["ppid"] == 2 or i["cpu_times"] is None:  # 2 = kthreadd
            continue
        out[(i["pid"], i["create_time"])] = i["cpu_times"].user + i["cpu_times"].system
    return out


def other_cpu_seconds(a: dict, b: dict) -> float:
    return sum(v - a.get(k, 0.0) for k, v in b.items() if v >= a.get(k, 0.0))


def scrape(admins: list[str]) -> dict[str, Any]:
    """Telemetry and request counters from gatewatch's /metrics, summed over its workers."""
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
    return {"exported": dict(exported), "dropped": dict(dropped), "queue_items": queue,
            "requests_by_outcome": dict(outcomes), "requests": requests}


def read_wrk(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk printed no WRKJSON line; its output was:\n{stdout[-2000:]}")


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Target:
    url: str
    procs: list[Proc] = field(default_factory=list)  # what to stop afterwards (the proxy under test)
    cpu_procs: Any = None  # callable → psutil processes whose CPU counts as the proxy's
    admin: list[str] | None = None  # every worker's admin address
    info: dict = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, tools: dict[str, str], workdir: Path, cpus: list[int]):
        self.args = args
        self.tools = tools
        self.workdir = workdir
        self.cpus = cpus
        self.pinned = len(cpus) >= 2
        self.proxy_cpu = cpus[0] if self.pinned else None
        self.load_cpu = cpus[1] if self.pinned else None
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.backend: Proc | None = None
        self.backend_ports: list[int] = []
        self.sink: Proc | None = None
        self.sink_status_file = workdir / "otlp_sink.status.json"
        self.sink_endpoint: str | None = None
        self.off_mode = "OTEL_SDK_DISABLED=true"
        self.off_fallback = False
        self.source_hashes: set[str] = set()
        self.notes: list[str] = []
        self.seq = 0

    # --- helpers ---

    def taskset(self, cpu: int | None) -> list[str]:
        return [self.tools["taskset"], "-c", str(cpu)] if cpu is not None else []

    def every_cpu(self) -> list[str]:
        """Free to run anywhere (the harness itself is pinned to the load CPU, and children inherit that)."""
        return [self.tools["taskset"], "-c", ",".join(map(str, self.cpus))] if len(self.cpus) > 1 else []

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def ours(self) -> set[int]:
        pids = {os.getpid()}
        for p in list(RUNNING):
            pids.update(q.pid for q in p.tree())
        return pids

    def other_load(self, seconds: float = 1.0) -> float:
        """Cores' worth of CPU used by processes that are not ours over `seconds`."""
        a = other_cpu_snapshot(self.ours())
        time.sleep(seconds)
        return other_cpu_seconds(a, other_cpu_snapshot(self.ours())) / seconds

    def wait_quiet(self) -> float | None:
        """With --wait-quiet S: wait up to S seconds until other processes use < 5 % of a core."""
        if not self.args.wait_quiet:
            return None
        deadline = time.monotonic() + self.args.wait_quiet
        load = self.other_load(1.0)
        while load >= 0.05 and time.monotonic() < deadline:
            load = self.other_load(1.0)
        return round(load, 3)

    def next_name(self, base: str) -> str:
        self.seq += 1
        return f"{self.seq:03d}-{base}"

    def wait_http(self, url: str, proc: Proc, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); log:\n{proc.log_text()[-2000:]}")
            try:
                with HTTP.open(url, timeout=2) as r:
                    body = r.read()
                if r.status == 200 and body == b"ok":
                    return
                last = f"status {r.status} body {body[:60]!r}"
            except Exception as err:  # not up yet
                last = err
            time.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not answer 200 'ok' at {url}: {last}; log:\n{proc.log_text()[-2000:]}")

    def wrk(self, url: str, conns: int, duration_s: int, label: str) -> dict[str, Any]:
        argv = self.taskset(self.load_cpu) + [self.tools["wrk"], "-t1", f"-c{conns}", f"-d{duration_s}s",
                                               "-s", str(LUA), url]
        rc, out, err = run_capture(self.next_name(f"wrk-{label}"), argv, self.workdir, duration_s + 60)
        if rc != 0:
            raise RuntimeError(f"wrk exited {rc}: {err.strip()[-1000:]}")
        return read_wrk(out)

    # --- long-lived helpers: backend and OTLP sink ---

    def start_backend(self, n_ports: int) -> None:
        d = self.workdir / "backend"
        d.mkdir(exist_ok=True)
        self.backend_ports = port_range(max(1, n_ports))
        conf = d / "nginx.conf"
        conf.write_text(backend_conf(d, self.backend_ports, self.nofile))
        self.backend = Proc("backend-nginx", self.taskset(self.load_cpu) + [
            self.tools["nginx"], "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], self.workdir)
        self.wait_http(f"http://127.0.0.1:{self.backend_ports[0]}{PATH}", self.backend)
        if len(self.backend_ports) > 1:
            self.wait_http(f"http://127.0.0.1:{self.backend_ports[-1]}{PATH}", self.backend)
        log(f"bench: backend nginx on 127.0.0.1:{self.backend_ports[0]}"
            + (f" (and {len(self.backend_ports) - 1} more ports up to {self.backend_ports[-1]})"
               if len(self.backend_ports) > 1 else ""))

    def backend_status(self) -> dict[str, int] | None:
        """nginx stub_status of the backend: connections accepted, requests served, connections open. Each call
        costs the backend one connection and one request of its own (subtracted by the caller)."""
        try:
            with HTTP.open(f"http://127.0.0.1:{self.backend_ports[0]}/__bench_status", timeout=5) as r:
                lines = r.read().decode().splitlines()
            accepts, handled, requests = (int(x) for x in lines[2].split())
            return {"active": int(lines[0].split(":")[1]), "accepts": accepts, "requests": requests}
        except Exception:
            return None

    def start_sink(self) -> None:
        argv = self.taskset(self.load_cpu) + [sys.executable, str(BENCH / "otlp_sink.py"), "--status-file",
                                              str(self.sink_status_file)]
        if self.args.sink_flatten:
            argv.append("--flatten")
        self.sink = Proc("otlp-sink", argv, self.workdir, env=self.child_env(), cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.sink_status_file.exists():
                self.sink_endpoint = json.loads(self.sink_status_file.read_text())["http_endpoint"]
                log(f"bench: OTLP sink {self.sink_endpoint} (pid {self.sink.pid})")
                return
            if not self.sink.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"OTLP sink did not start; log:\n{self.sink.log_text()[-2000:]}")

    def sink_quiet(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The sink's counts once they stop moving (a stopped gateway's last flush may still be in flight)."""
        if not self.sink:
            return None
        deadline = time.monotonic() + timeout_s
        last = self.sink_status()
        while time.monotonic() < deadline:
            time.sleep(0.4)
            cur = self.sink_status()
            if (cur.get("spans"), cur.get("logs")) == (last.get("spans"), last.get("logs")):
                return cur
            last = cur
        return last

    def sink_status(self) -> dict[str, Any]:
        for _ in range(20):
            try:
                return json.loads(self.sink_status_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.01)
        return {"spans": 0, "logs": 0}

    # --- targets ---

    def start_target(self, case: Case, rnd: int) -> Target:
        backend = f"127.0.0.1:{self.backend_ports[0]}"
        if case.kind == "direct":
            return Target(url=f"http://{backend}{PATH}", cpu_procs=lambda: self.backend.tree())
        if case.kind == "haproxy":
            port = free_port()
            cfg = self.workdir / f"haproxy-r{rnd}.cfg"
            cfg.write_text(haproxy_conf(port, self.pool_ports(case.pool)))
            p = Proc(self.next_name("haproxy"), self.taskset(self.proxy_cpu) + [
                self.tools["haproxy"], "-db", "-f", str(cfg)], self.workdir)
            url = f"http://127.0.0.1:{port}{PATH}"
            self.wait_http(url, p)
            return Target(url=url, procs=[p], cpu_procs=p.tree)
        if case.kind == "nginx":
            port = free_port()
            d = self.workdir / f"nginx-proxy-r{rnd}"
            d.mkdir(exist_ok=True)
            conf = d / "nginx.conf"
            conf.write_text(nginx_proxy_conf(d, port, self.backend_ports[0], self.nofile))
            p = Proc(self.next_name("nginx-proxy"), self.taskset(self.proxy_cpu) + [
                self.tools["nginx"], "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], self.workdir)
            url = f"http://127.0.0.1:{port}{PATH}"
            self.wait_http(url, p)
            return Target(url=url, procs=[p], cpu_procs=p.tree)
        if case.kind == "floor":
            port = free_port()
            p = Proc(self.next_name("python-floor"), self.taskset(self.proxy_cpu) + [
                sys.executable, str(BENCH / "floor_proxy.py"), str(port),
                str(self.backend_ports[0])], self.workdir)
            url = f"http://127.0.0.1:{port}{PATH}"
            self.wait_http(url, p)
            return Target(url=url, procs=[p], cpu_procs=p.tree)
        return self.start_gatewatch(case, rnd)

    def pool_ports(self, pool: int) -> list[int]:
        """The backend port of each pool instance (gatewatch's and the HAProxy reference's alike)."""
        n = max(1, pool)
        if self.args.pool_addressing == "ports" and n > 1:
            return self.backend_ports[:n]
        return [self.backend_ports[0]] * n

    def gatewatch_config(self, case: Case) -> dict:
        n = max(1, case.pool)
        ports = self.pool_ports(n)
        weighted = case.algorithm == "weighted_round_robin"
        instances = [{"id": f"i{k:04d}", "host": "127.0.0.1", "port": ports[k],
                      **({"weight": k % 3 + 1} if weighted else {})} for k in range(n)]
        telemetry: dict[str, Any] = {"service_name": "gatewatch-bench", "local_dir": str(self.workdir / "jsonl")}
        if self.sink_endpoint:
            telemetry["otlp"] = {"endpoint": self.sink_endpoint, "protocol": "http/protobuf"}
        if case.telemetry == "off" and self.off_fallback:
            telemetry["sampling"] = {"ratio": 0.0}
        return {
            **({"workers": case.workers} if case.workers > 1 else {}),
            "admin": {"address": "127.0.0.1:0"},
            "telemetry": telemetry,
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                     "routes": make_routes(case.routes)},
            "balancer": {"pools": [{"name": "backend", "algorithm": case.algorithm, "instances": instances}]},
        }

    def start_gatewatch(self, case: Case, rnd: int) -> Target:
        name = self.next_name(f"gw-{case.name}")
        cfg_path = self.workdir / f"{name}.yaml"
        cfg_path.write_text(json.dumps(self.gatewatch_config(case), indent=1))  # JSON is YAML
        ready = self.workdir / f"{name}.ready.json"
        env = self.child_env()
        if case.telemetry == "off":
            env["OTEL_SDK_DISABLED"] = "true"
        elif case.telemetry == "sampled":
            env["OTEL_TRACES_SAMPLER"] = "traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = "0.1"
        self.last_source_hash = source_hash()
        self.source_hashes.add(self.last_source_hash)
        p = Proc(name, (self.taskset(self.proxy_cpu) if case.pinned else self.every_cpu()) + [
            sys.executable, "-m", "gatewatch", "run", "-c", str(cfg_path), "--ready-file", str(ready)],
            self.workdir, env=env, cwd=self.workdir)
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
        info = json.loads(ready.read_text())
        url = f"http://{info['listeners']['public']}{PATH}"
        self.wait_http(url, p)
        if case.telemetry == "off" and "disabled" not in str(info.get("telemetry", "")) and not self.off_fallback:
            self.off_fallback = True
            self.off_mode = "telemetry.sampling.ratio: 0 (OTEL_SDK_DISABLED=true did not disable export)"
            self.notes.append(f"OTEL_SDK_DISABLED=true did not report telemetry as disabled "
                              f"({info.get('telemetry')!r}); telemetry-off cases use sampling.ratio 0 from now on")
            p.stop()
            return self.start_gatewatch(case, rnd)
        admins = [w["admin"] for w in info.get("workers") or []] or [info["admin"]]
        return Target(url=url, procs=[p], cpu_procs=p.tree, admin=admins, info=info)

    def stop_target(self, t: Target) -> list[str]:
        problems = []
        for p in t.procs:
            crashed = not p.alive()
            p.stop()
            text = p.log_text()
            if crashed:
                problems.append(f"{p.name} had exited during the case (exit {p.popen.returncode})")
            bad = [ln for ln in text.splitlines()
                   if any(k in ln for k in (" ERROR ", " CRITICAL ", "Traceback", "[ALERT]", "[emerg]", "[alert]",
                                            "[crit]", " WARNING ", "[WARNING]", "[error]"))]
            if bad:
                uniq = list(dict.fromkeys(ln.split(": ", 1)[-1][:200] for ln in bad))
                problems.append(f"{p.name}: {len(bad)} warning/error log lines, e.g. {uniq[:3]}")
        return problems

    # --- settle telemetry ---

    def settle(self, t: Target, timeout_s: float = 20.0) -> tuple[dict | None, dict | None, bool]:
        """Wait until gatewatch's telemetry queues are empty and exports and the sink's counts stop moving."""
        if not t.admin:
            return None, None, True
        deadline = time.monotonic() + timeout_s
        last = None
        stable = 0
        m = s = None
        while time.monotonic() < deadline:
            m = scrape(t.admin)
            s = self.sink_status() if self.sink else None
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

    # --- one measurement ---

    def measure(self, case: Case, rnd: int) -> dict[str, Any]:
        import psutil

        if case.kind == "idle":
            return self.measure_idle(case, rnd)
        sink0 = self.sink_quiet() if case.kind == "gatewatch" else None
        t = self.start_target(case, rnd)
        problems: list[str] = []
        try:
            self.wrk(t.url, case.conns, self.args.warmup, f"warmup-{case.name}")
            self.settle(t)
            quiet = self.wait_quiet()
            procs = t.cpu_procs()
            affinity = proc_affinities(procs)
            sink_ps = self.sink.tree() if self.sink and case.telemetry != "off" else []
            ours = self.ours()
            other0 = other_cpu_snapshot(ours)
            cpu0, sink_cpu0, busy0 = cpu_seconds(procs), cpu_seconds(sink_ps), percpu_busy()
            by0 = cpu_by_process(procs)
            be0 = self.backend_status()
            w0 = time.monotonic()
            w = self.wrk(t.url, case.conns, self.args.duration, case.name)
            wall = time.monotonic() - w0
            cpu_mid, busy_mid = cpu_seconds(procs), percpu_busy()
            other = other_cpu_seconds(other0, other_cpu_snapshot(ours))
            be1 = self.backend_status()
            m, s, settled = self.settle(t)
            cpu1, sink_cpu1, busy1 = cpu_seconds(procs), cpu_seconds(sink_ps), percpu_busy()
            by1 = cpu_by_process(procs)
            if not settled:
                problems.append("telemetry did not settle within 20 s after the run")
            alive = all(p.alive() for p in t.procs)
        finally:
            problems += self.stop_target(t)
        if not alive:
            problems.append("CRASH: the proxy process died during the measurement")
        reqs = w["requests"]
        dur_s = w["duration_us"] / 1e6
        lat = w["latency_us"]
        pct = lat["percentiles"]
        errs = w["errors"]
        cpu = cpu1 - cpu0
        r: dict[str, Any] = {
            "round": rnd, "rps": reqs / dur_s if dur_s else 0.0, "requests": reqs, "duration_s": round(dur_s, 3),
            "p50_ms": pct["50"] / 1000, "p75_ms": pct["75"] / 1000, "p90_ms": pct["90"] / 1000,
            "p99_ms": pct["99"] / 1000, "p999_ms": pct["99.9"] / 1000, "max_ms": lat["max"] / 1000,
            "mean_ms": lat["mean"] / 1000, "errors": errs, "non_2xx_3xx": errs["status"],
            "socket_errors": errs["connect"] + errs["read"] + errs["write"] + errs["timeout"],
            "cpu_busy_per_cpu": busy_fraction(busy0, busy_mid),  # during the wrk run, per CPU of the machine
            # cores' worth of CPU that processes NOT started by this harness used during the run (noise)
            "other_cpu_util": round(other / wall, 3) if wall else None,
        }
        if quiet is not None:
            r["other_cpu_util_before"] = quiet
        if be0 and be1:
            # connections the backend accepted during the run (how well the proxy reuses upstream connections),
            # requests it served, and connections still open to it afterwards (idle keep-alive the proxy holds)
            r["backend_conns_opened"] = be1["accepts"] - be0["accepts"] - 1
            r["backend_requests"] = be1["requests"] - be0["requests"] - 1
            r["backend_conns_open_after"] = be1["active"] - 1
        busy_load = (r["cpu_busy_per_cpu"][self.load_cpu]
                     if self.pinned and self.load_cpu < len(r["cpu_busy_per_cpu"]) else 0.0)
        if case.kind != "direct" and busy_load >= LOAD_SATURATED:
            r["load_cpu_saturated"] = True
            problems.append(f"LOAD CPU SATURATED: CPU {self.load_cpu} (wrk, backend, sink and anything the proxy "
                            f"put there) was {r['cpu_busy_per_cpu'][self.load_cpu]:.0%} busy; the rate may be "
                            f"limited by that core, not only by the proxy's")
        if r["other_cpu_util"] is not None and r["other_cpu_util"] > NOISY:
            problems.append(f"NOISY: other processes on this machine used {r['other_cpu_util']:.2f} cores during "
                            f"the run")
        if case.kind != "direct":
            r["cpu_s"] = round(cpu, 4)
            r["cpu_s_per_1k"] = cpu / reqs * 1000 if reqs else None  # includes exporting what the run produced
            r["processes"] = len(procs)
            if case.kind == "gatewatch":
                r["source_hash"] = self.last_source_hash
            r["cpu_s_per_1k_by_process"] = {k: round((v - by0.get(k, 0.0)) / reqs * 1000, 4) if reqs else None
                                            for k, v in by1.items()}
            r["process_affinity"] = affinity
            if self.pinned and case.pinned:
                away = [a for a in affinity if a["cpus"] and a["cpus"] != [self.proxy_cpu]]
                if away:
                    note = (f"{case.kind}: process(es) of the proxy under test run outside the proxy's CPU "
                            f"{self.proxy_cpu}: " + ", ".join(f"{a['name']} on CPU {a['cpus']}" for a in away)
                            + f" — they share CPU {self.load_cpu} with wrk, the backend and the OTLP sink")
                    if note not in self.notes:
                        self.notes.append(note)
            # CPU of the proxy's process tree during the wrk run / wall time: 1.0 = one core busy. It can exceed
            # 1.0 when the proxy has processes or threads running on another core.
            r["proxy_cpu_util"] = round((cpu_mid - cpu0) / wall, 3) if wall else None
        else:
            r["backend_cpu_s_per_1k"] = cpu / reqs * 1000 if reqs else None
        if case.kind == "gatewatch":
            r["telemetry_mode"] = {"off": self.off_mode, "full": "sampling ratio 1.0 (default)",
                                   "sampled": "OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1"}[
                case.telemetry]
            if m is not None:
                r["telemetry_exported"] = m["exported"]
                r["telemetry_dropped"] = m["dropped"]
                r["dropped_total"] = sum(m["dropped"].values())
                r["exported_total"] = sum(m["exported"].values())
                r["gateway_requests"] = m["requests"]
                r["requests_by_outcome"] = m["requests_by_outcome"]
                odd = {k: v for k, v in m["requests_by_outcome"].items() if not k.startswith("proxied/2")}
                aborts = sum(v for k, v in odd.items() if k.startswith("client_abort/"))
                r["client_aborts"] = aborts
                # wrk closes its connections with requests in flight when a run ends: up to one abort per
                # connection per run (warm-up + measurement) is the load generator, not the gateway.
                if aborts > 2 * case.conns:
                    problems.append(f"{aborts:.0f} client_abort outcomes (more than wrk's stops explain)")
                other = {k: v for k, v in odd.items() if not k.startswith("client_abort/")}
                if other:
                    problems.append(f"gatewatch recorded non-proxied or non-2xx outcomes: {other}")
            if s is not None and sink0 is not None:
                r["sink_spans"] = s.get("spans", 0) - sink0.get("spans", 0)
                r["sink_logs"] = s.get("logs", 0) - sink0.get("logs", 0)
                r["sink_spans_by_kind"] = {k: v - sink0.get("spans_by_kind", {}).get(k, 0)
                                           for k, v in s.get("spans_by_kind", {}).items()}
                r["sink_logs_by_event"] = {k: v - sink0.get("logs_by_event", {}).get(k, 0)
                                           for k, v in s.get("logs_by_event", {}).items()}
                if case.telemetry != "off" and m is not None:
                    exp = m["exported"]
                    if r["sink_spans"] < exp.get("traces", 0) or r["sink_logs"] < exp.get("logs", 0):
                        problems.append(f"the sink decoded fewer items ({r['sink_spans']} spans, {r['sink_logs']} "
                                        f"logs) than gatewatch counted as exported ({exp})")
                if case.telemetry == "off" and (r["sink_spans"] or r["sink_logs"] or r.get("exported_total")):
                    problems.append(f"telemetry OFF still exported ({r.get('telemetry_exported')}, sink got "
                                    f"{r['sink_spans']} spans / {r['sink_logs']} logs)")
            if case.telemetry != "off":
                r["sink_cpu_s"] = round(sink_cpu1 - sink_cpu0, 4)
                r["sink_cpu_s_per_1k"] = (sink_cpu1 - sink_cpu0) / reqs * 1000 if reqs else None
            if r.get("dropped_total"):
                problems.append(f"DROPPED telemetry: {r['telemetry_dropped']}")
        if errs["status"]:
            problems.append(f"wrk counted {errs['status']} non-2xx/3xx responses")
        if r["socket_errors"]:
            problems.append(f"wrk socket errors: {errs}")
        r["problems"] = problems
        return r

    # --- idle connections ---

    def measure_idle(self, case: Case, rnd: int) -> dict[str, Any]:
        import psutil

        n = self.args.idle_conns
        t = self.start_target(Case("idle", "gatewatch", telemetry="off"), rnd)
        problems: list[str] = []
        try:
            self.wrk(t.url, 32, max(1, self.args.warmup), "warmup-idle")
            time.sleep(0.5)
            proc = psutil.Process(t.procs[0].pid)
            host, port = t.info["listeners"]["public"].rsplit(":", 1)
            out = asyncio.run(idle_connections(host, int(port), n, lambda: proc.memory_info().rss))
            alive = t.procs[0].alive()
        finally:
            problems += self.stop_target(t)
        if not alive:
            problems.append("CRASH: gatewatch died during the idle-connection test")
        opened = out["opened"]
        per = (out["rss_open"] - out["rss_before"]) / 1024 / opened if opened else None
        if out["failures"]:
            problems.append(f"{sum(out['failures'].values())} of {n} connections failed: {out['failures']}")
        if out["still_alive"] < out["probed"]:
            problems.append(f"only {out['still_alive']} of {out['probed']} probed idle connections still answered")
        return {"round": rnd, "connections": n, "opened": opened, "rss_before_kib": out["rss_before"] // 1024,
                "rss_open_kib": out["rss_open"] // 1024, "rss_after_close_kib": out["rss_closed"] // 1024,
                "rss_kib_per_conn": per, "open_s": round(out["open_s"], 2), "probed": out["probed"],
                "probed_alive": out["still_alive"], "failures": dict(out["failures"]), "problems": problems}

    # --- the run ---

    def run(self, cases: list[Case]) -> dict[str, Any]:
        started = dt.datetime.now(dt.timezone.utc)
        tree0 = tree_state()
        mach = machine(self.tools)
        mach["cpus_usable"] = self.cpus
        need_ports = max([c.pool for c in cases if c.kind in ("gatewatch", "haproxy")] + [1])
        if self.args.pool_addressing != "ports":
            need_ports = 1
        self.start_backend(need_ports)
        if any(c.kind == "gatewatch" for c in cases):
            self.start_sink()
        raw: dict[str, list[dict]] = {c.name: [] for c in cases}
        t_start = time.monotonic()
        for rnd in range(self.args.rounds):
            order = cases if rnd % 2 == 0 else list(reversed(cases))  # interleaved, alternating direction
            for case in order:
                t0 = time.monotonic()
                try:
                    res = self.measure(case, rnd)
                except Exception as err:  # one broken case must not lose the others (Ctrl-C is not an Exception)
                    msg = f"{type(err).__name__}: {err}"
                    res = {"round": rnd, "failed": msg, "problems": [f"FAILED: {msg[:500]}"]}
                raw[case.name].append(res)
                log(f"bench: round {rnd + 1}/{self.args.rounds} {case.name:<32} {summary_line(res)} "
                    f"({time.monotonic() - t0:.0f}s)")
                if not self.backend.alive():
                    raise RuntimeError(f"the nginx backend died:\n{self.backend.log_text()[-2000:]}")
        elapsed = time.monotonic() - t_start
        tree1 = tree_state()
        if tree0["source_hash"] != tree1["source_hash"] or len(self.source_hashes) > 1:
            self.notes.append(f"the gateway's Python sources changed on disk during the run (hash at start "
                              f"{tree0['source_hash']}, at end {tree1['source_hash']}, {len(self.source_hashes)} "
                              f"version(s) seen when gatewatch processes started): someone edited edge/, balancer/ "
                              f"or telemetry/ meanwhile, so cases may have run different code")
        return self.results(cases, raw, mach, tree0, tree1, started, elapsed)

    def results(self, cases, raw, mach, tree0, tree1, started, elapsed) -> dict[str, Any]:
        med: dict[str, dict] = {}
        for c in cases:
            ok = [r for r in raw[c.name] if "failed" not in r]
            if not ok:
                med[c.name] = {"failed": True}
                continue
            keys = [k for k, v in ok[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k != "round"]
            med[c.name] = {k: median([r.get(k) for r in ok]) for k in keys}
            if "cpu_busy_per_cpu" in ok[0]:
                med[c.name]["cpu_busy_per_cpu"] = [median([r["cpu_busy_per_cpu"][i] for r in ok])
                                                   for i in range(len(ok[0]["cpu_busy_per_cpu"]))]
            med[c.name]["rounds_ok"] = len(ok)
            med[c.name]["problems"] = sorted({p for r in raw[c.name] for p in r.get("problems", [])})
            if c.kind == "gatewatch":
                med[c.name]["dropped_total_all_rounds"] = sum(r.get("dropped_total", 0) or 0 for r in ok)
        ratios, per_round = compute_ratios(raw, self.args.rounds)
        targets = {}
        for name, (op, goal) in TARGETS.items():
            v = ratios.get(name) if "." not in name else (ratios.get(name.split(".")[0]) or {}).get(name.split(".")[1])
            met = None if v is None else (v >= goal if op == ">=" else v <= goal)
            targets[name] = {"value": v, "target": f"{op} {goal}", "met": met}
        dropped = {c.name: med[c.name].get("dropped_total_all_rounds") for c in cases
                   if c.kind == "gatewatch" and c.telemetry != "off" and not med[c.name].get("failed")}
        targets["no_telemetry_dropped"] = {"value": dropped, "target": "0 in every telemetry case",
                                           "met": all(not v for v in dropped.values()) if dropped else None}
        mach["tree_at_start"] = tree0
        mach["tree_at_end"] = tree1
        mach["gatewatch_source_hashes_run"] = sorted(self.source_hashes)
        return {
            "schema": 1,
            "started_at": started.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "settings": {
                "quick": self.args.quick, "rounds": self.args.rounds, "duration_s": self.args.duration,
                "warmup_s": self.args.warmup, "wrk": "wrk -t1 -c32 (latency cases -c1)", "path": PATH,
                "idle_connections": self.args.idle_conns, "pool_addressing": self.args.pool_addressing,
                "pinning": ({"proxy_cpu": self.proxy_cpu, "load_cpu": self.load_cpu,
                             "on_load_cpu": ["wrk", "nginx backend", "otlp sink", "harness"]}
                            if self.pinned else "unpinned: only one CPU is usable"),
                "telemetry_off_mode": self.off_mode, "nofile_limit": self.nofile,
                "wait_quiet_s": self.args.wait_quiet, "noisy_threshold_cores": NOISY,
                "ratio_method": "median over rounds of the ratio within each round",
            },
            "machine": mach,
            "medians": med,
            "ratios": ratios,
            "ratios_per_round": per_round,
            "targets": targets,
            "notes": self.notes,
            "rounds": raw,
        }


def summary_line(r: dict) -> str:
    if "failed" in r:
        return "FAILED: " + r["failed"].splitlines()[0][:150]
    if "rss_kib_per_conn" in r:
        per = r["rss_kib_per_conn"]
        return f"{r['opened']} idle conns, {per:.1f} KiB/conn" if per is not None else "no connections opened"
    s = f"{r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
    if r.get("cpu_s_per_1k") is not None:
        s += f"  cpu {r['cpu_s_per_1k']:.3f} s/1k"
    if r.get("exported_total") is not None:
        s += f"  exported {r['exported_total']:.0f} dropped {r['dropped_total']:.0f}"
    if (r.get("other_cpu_util") or 0) > NOISY:
        s += f"  other processes {r['other_cpu_util']:.2f} cores"
    if r.get("problems"):
        s += f"  [{len(r['problems'])} problem(s)]"
    return s


def compute_ratios(raw: dict[str, list[dict]], rounds: int) -> tuple[dict, dict]:
    def value(name: str, rnd: int, key: str) -> float | None:
        for r in raw.get(name, []):
            if r.get("round") == rnd and "failed" not in r:
                if key == "proxy_cpu":  # CPU-s/1k of the gateway process itself, never the tree's total
                    return (r.get("cpu_s_per_1k_by_process") or {}).get("gatewatch")
                return r.get(key)
        return None

    def ratio(a: str, b: str, key: str = "rps") -> list[float | None]:
        out = []
        for rnd in range(rounds):
            x, y = value(a, rnd, key), value(b, rnd, key)
            out.append(x / y if x is not None and y else None)
        return out

    def capacity(a: str, b: str) -> list[float | None]:
        """How many requests the proxy's core serves with `a` per request served with `b`: b's CPU ÷ a's."""
        return ratio(b, a, "proxy_cpu")

    per: dict[str, Any] = {
        "direct_vs_haproxy": ratio("direct", "haproxy"),
        "nginx_vs_haproxy": ratio("nginx", "haproxy"),
        "floor_vs_haproxy": ratio("python-floor", "haproxy"),
        "off_vs_floor": ratio("gatewatch-off", "python-floor"),
        "off_vs_haproxy": ratio("gatewatch-off", "haproxy"),
        "full_vs_haproxy": ratio("gatewatch-full", "haproxy"),
        "sampled_vs_haproxy": ratio("gatewatch-sampled", "haproxy"),
        "full_vs_off": ratio("gatewatch-full", "gatewatch-off"),
        "sampled_vs_off": ratio("gatewatch-sampled", "gatewatch-off"),
        # the same two ratios by the proxy core's CPU per request instead of throughput: unaffected by the load
        # core, which the exporter shares with wrk, the backend and the sink
        "full_vs_off_proxy_cpu": capacity("gatewatch-full", "gatewatch-off"),
        "sampled_vs_off_proxy_cpu": capacity("gatewatch-sampled", "gatewatch-off"),
        "routes_1000_vs_10": ratio("routes-1000", "routes-10"),
        "pool_1000_vs_3": {alg: ratio(f"pool-1000-{alg}", f"pool-3-{alg}")
                           for alg in ("round_robin", "weighted_round_robin")},
        "haproxy_pool_1000_vs_3": ratio("pool-1000-haproxy", "pool-3-haproxy"),
        "workers_2_vs_1": ratio("workers-2", "workers-1"),
        "added_latency_ms_p50": [
            (value("latency-1conn-full", rnd, "p50_ms") - value("latency-1conn-direct", rnd, "p50_ms"))
            if value("latency-1conn-full", rnd, "p50_ms") is not None
            and value("latency-1conn-direct", rnd, "p50_ms") is not None else None
            for rnd in range(rounds)],
        "rss_kib_per_idle_conn": [next((r.get("rss_kib_per_conn") for r in raw.get("idle-10k", [])
                                        if r.get("round") == rnd and "failed" not in r), None)
                                  for rnd in range(rounds)],
    }
    med: dict[str, Any] = {}
    for k, v in per.items():
        if isinstance(v, dict):
            med[k] = {a: median(x) for a, x in v.items()}
        else:
            med[k] = median(v)
    return med, per


# --------------------------------------------------------------------------------------------------------------
# Idle keep-alive connections (asyncio, in the harness, on the load CPU)
# --------------------------------------------------------------------------------------------------------------

async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def idle_connections(host: str, port: int, n: int, rss) -> dict[str, Any]:
    req = f"GET {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: gatewatch-bench-idle\r\n\r\n".encode()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: collections.Counter[str] = collections.Counter()
    sem = asyncio.Semaphore(32)  # like wrk -c32: the gateway's upstream pool does not grow past the warm-up's

    async def one() -> None:
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except Exception as err:
                failures[f"connect: {type(err).__name__}"] += 1
                return
            try:
                w.write(req)
                status = await asyncio.wait_for(_read_response(r), 10)
                if status != 200:
                    failures[f"status {status}"] += 1
                conns.append((r, w))
            except Exception as err:
                failures[f"request: {type(err).__name__}"] += 1
                w.close()

    await asyncio.sleep(0)
    rss_before = rss()
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    open_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    rss_open = rss()
    probe = random.Random(1).sample(conns, min(100, len(conns)))
    alive = 0
    for r, w in probe:  # still open and usable after idling?
        try:
            w.write(req)
            if await asyncio.wait_for(_read_response(r), 5) == 200:
                alive += 1
        except Exception:
            pass
    for _, w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    await asyncio.sleep(1.0)
    rss_closed = rss()
    return {"opened": len(conns), "failures": failures, "rss_before": rss_before, "rss_open": rss_open,
            "rss_closed": rss_closed, "open_s": open_s, "probed": len(probe), "still_alive": alive}


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------

def fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def render(res: dict[str, Any]) -> str:
    med = res["medians"]
    ratios = res["ratios"]
    pr = res["ratios_per_round"]
    s = res["settings"]
    m = res["machine"]
    lines = []
    pin = (f"proxy pinned to CPU {s['pinning']['proxy_cpu']}; wrk, backend, OTLP sink and harness on CPU "
           f"{s['pinning']['load_cpu']}" if isinstance(s["pinning"], dict) else s["pinning"].upper())
    lines.append(f"Gatewatch benchmark — {res['started_at']} — {'quick' if s['quick'] else 'full'}: {s['rounds']} "
                 f"round(s) × {s['duration_s']} s (+{s['warmup_s']} s warm-up), wrk -t1 -c32, path {s['path']}")
    lines.append(f"{m['cpu_model']}, {m['cpu_count']} CPU, kernel {m['kernel']}, Python {m['python']}; {pin}")
    lines.append(f"{m['haproxy']}; {m['nginx']}; {m['wrk']}; tree {m['tree_at_start']['commit'][:10]}"
                 + (" + uncommitted changes" if m['tree_at_start']['dirty_outside_bench'] else ""))
    lines.append(f"telemetry off = {s['telemetry_off_mode']}; medians of {s['rounds']} round(s); ratios = median of "
                 f"per-round ratios")
    lines.append("")
    hdr = (f"{'case':<31} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs HAProxy':>10} {'vs gw-off':>9} "
           f"{'CPU s/1k':>9} {'proc CPU':>8} {'busy P/L':>10}  {'telemetry exported / dropped':<30} flags")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    vs_h = {"direct": "direct_vs_haproxy", "nginx": "nginx_vs_haproxy", "python-floor": "floor_vs_haproxy",
            "gatewatch-off": "off_vs_haproxy",
            "gatewatch-full": "full_vs_haproxy", "gatewatch-sampled": "sampled_vs_haproxy"}
    vs_off = {"gatewatch-full": "full_vs_off", "gatewatch-sampled": "sampled_vs_off"}
    for name, mm in med.items():
        if name == "idle-10k":
            continue
        if mm.get("failed"):
            lines.append(f"{name:<31} FAILED in every round")
            continue
        h = "1.00" if name == "haproxy" else fmt(ratios.get(vs_h.get(name, "")), ".2f")
        o = fmt(ratios.get(vs_off.get(name, "")), ".2f")
        cpu = fmt(mm.get("cpu_s_per_1k"), ".3f")
        use = fmt(mm.get("proxy_cpu_util"), ".2f")
        bl = mm.get("cpu_busy_per_cpu") or []
        idx = [s["pinning"]["proxy_cpu"], s["pinning"]["load_cpu"]] if isinstance(s["pinning"], dict) else [0, 1]
        busy = "/".join(fmt(bl[i], ".2f") for i in idx if i < len(bl)) or "-"
        tel = ""
        if mm.get("exported_total") is not None:
            tel = f"{mm['exported_total']:.0f} / {mm.get('dropped_total_all_rounds', 0):.0f}"
            if mm.get("sink_cpu_s_per_1k") is not None:
                tel += f" (sink {mm['sink_cpu_s_per_1k']:.3f} s/1k)"
        flags = []
        if mm.get("dropped_total_all_rounds"):
            flags.append("DROPPED")
        if mm.get("non_2xx_3xx"):
            flags.append(f"non-2xx {mm['non_2xx_3xx']:.0f}")
        if mm.get("socket_errors"):
            flags.append(f"sock-err {mm['socket_errors']:.0f}")
        sat = sum(1 for r in res["rounds"].get(name, []) if r.get("load_cpu_saturated"))
        if sat:
            flags.append(f"LOAD-CPU-SAT({sat}/{mm.get('rounds_ok', s['rounds'])})")
        if (mm.get("other_cpu_util") or 0) > NOISY:
            flags.append(f"NOISY({mm['other_cpu_util']:.2f} cores other)")
        if any("CRASH" in p for p in mm.get("problems", [])):
            flags.append("CRASH")
        if mm.get("rounds_ok", s["rounds"]) < s["rounds"]:
            flags.append(f"only {mm['rounds_ok']}/{s['rounds']} rounds")
        lines.append(f"{name:<31} {mm['rps']:>9.0f} {mm['p50_ms']:>8.3f} {mm['p99_ms']:>8.3f} {h:>10} {o:>9} "
                     f"{cpu:>9} {use:>8} {busy:>10}  {tel:<30} {' '.join(flags)}")
    split = []
    for name, rounds in res["rounds"].items():
        procs = sorted({k for r in rounds for k in (r.get("cpu_s_per_1k_by_process") or {})})
        if len(procs) > 1:
            parts = [f"{k} {fmt(median([(r.get('cpu_s_per_1k_by_process') or {}).get(k) for r in rounds]), '.3f')}"
                     for k in procs]
            split.append(f"  {name:<29} " + ", ".join(parts))
    if split:
        lines.append("")
        lines.append("CPU s/1k by process of the proxy's tree (medians)")
        lines += split
    cap = [f"{k.split('_vs_')[0]} {fmt(ratios.get(k), '.2f')}" for k in ("full_vs_off_proxy_cpu", "sampled_vs_off_proxy_cpu")
           if ratios.get(k) is not None]
    if ratios.get("haproxy_pool_1000_vs_3") is not None:
        lines.append("")
        lines.append(f"reference for pool_1000_vs_3: HAProxy round robin over the same pools "
                     f"{fmt(ratios['haproxy_pool_1000_vs_3'], '.2f')} (1,000 distinct upstream connections cost "
                     f"every proxy and the backend, not only gatewatch)")
    if ratios.get("workers_2_vs_1") is not None:
        w1, w2 = med.get("workers-1") or {}, med.get("workers-2") or {}
        lines.append("")
        lines.append(f"multi-core (workers: 2 ÷ workers: 1, both free to use every CPU, wrk and the backend on the "
                     f"load CPU): {fmt(ratios['workers_2_vs_1'], '.2f')}× the throughput at "
                     f"{fmt(w2.get('cpu_s_per_1k'), '.3f')} vs {fmt(w1.get('cpu_s_per_1k'), '.3f')} CPU-s/1k")
    if cap:
        lines.append("")
        lines.append("telemetry cost on the proxy's core (gatewatch-off CPU per request ÷ the case's, proxy process "
                     "only): " + ", ".join(cap))
    idle = med.get("idle-10k")
    if idle and not idle.get("failed"):
        lines.append("")
        lines.append(f"idle keep-alive connections: {idle['opened']:.0f} opened, RSS {idle['rss_before_kib']:.0f} → "
                     f"{idle['rss_open_kib']:.0f} KiB ({fmt(idle.get('rss_kib_per_conn'), '.1f')} KiB/conn; "
                     f"{idle['rss_after_close_kib']:.0f} KiB after closing them), "
                     f"{idle['probed_alive']:.0f}/{idle['probed']:.0f} probed still served")
    lines.append("")
    lines.append("Issue 3 targets (per-round values in brackets)")
    for name, t in res["targets"].items():
        if name == "no_telemetry_dropped":
            val = ", ".join(f"{k}: {v:.0f}" for k, v in (t["value"] or {}).items()) or "-"
            rounds = ""
        else:
            val = fmt(t["value"], ".2f")
            key, _, sub = name.partition(".")
            vals = pr.get(key)
            if sub and isinstance(vals, dict):
                vals = vals.get(sub)
            rounds = " [" + ", ".join(fmt(v, ".2f") for v in (vals or [])) + "]"
        met = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"  {name:<40} {val:>8}  target {t['target']:<28} {met}{rounds}")
    problems = []  # per case, one line per kind of problem, with the rounds it happened in
    for name, rounds in res["rounds"].items():
        kinds: dict[str, list] = {}
        for r in rounds:
            for p in r.get("problems", []):
                kind = p.split(":", 1)[0] if p.split()[0].isupper() else p
                kinds.setdefault(kind, []).append((r.get("round", 0) + 1, p))
        for kind, hits in kinds.items():
            where = f"round {hits[0][0]}" if len(hits) == 1 else f"rounds {', '.join(str(h[0]) for h in hits)}"
            problems.append(f"{name} ({where}): {hits[0][1] if len(hits) == 1 else hits[-1][1]}")
    if problems or res["notes"]:
        lines.append("")
        lines.append("Findings / problems")
        for note in res["notes"]:
            lines.append(f"  * {note}")
        for p in problems:
            lines.append(f"  * {p}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark gatewatch against HAProxy and nginx (issue 3). See bench/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases: " + ", ".join(CASE_NAMES) + "\n(a prefix such as 'pool', 'routes' or 'latency-1conn' "
               "selects its group)")
    ap.add_argument("--quick", action="store_true", help="1 round, 3 s runs, 2000 idle connections (< 3 min)")
    ap.add_argument("--out", default=str(BENCH / "results" / "latest.json"), help="JSON results file")
    ap.add_argument("--cases", nargs="+", metavar="CASE", help="run only these cases (default: all)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 10, quick 3)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up before each measurement (default 3, quick 1)")
    ap.add_argument("--idle-conns", type=int, help="idle keep-alive connections (default 10000, quick 2000)")
    ap.add_argument("--pool-addressing", choices=["ports", "same"], default="ports",
                    help="pool instances on distinct backend ports (default) or all on the same host:port")
    ap.add_argument("--sink-flatten", action="store_true",
                    help="the OTLP sink also converts every span/log record to a dict like the tests do")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each measurement wait up to SECONDS for other processes to use < 5%% of a core "
                         "(on a shared machine; default 0: do not wait, just report their CPU)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    a = ap.parse_args()
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    a.idle_conns = a.idle_conns or (2000 if a.quick else 10000)
    return a


class Interrupted(BaseException):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def main() -> int:
    args = parse_args()
    check_python_deps()
    cases = select_cases(args.cases)
    tools = ensure_tools()
    soft, _ = raise_nofile()
    need_fds = args.idle_conns + 2000
    if any(c.kind == "idle" for c in cases) and soft < need_fds:
        log(f"bench: the open-files limit is {soft}; {args.idle_conns} idle connections need about {need_fds}. "
            f"Lower --idle-conns or raise the hard limit (ulimit -Hn).")
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[1]})  # the harness itself stays off the proxy's core
    else:
        log("bench: only one CPU is usable: running UNPINNED (the proxy, wrk and the backend share it)")
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-bench-"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C → KeyboardInterrupt, even in background
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    bench = Bench(args, tools, workdir, cpus)
    code = 0
    try:
        res = bench.run(cases)
        table = render(res)
        print(table, flush=True)
        res["table"] = table
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        log(f"bench: results written to {out} ({res['elapsed_s']:.0f} s of measurements)")
    except (KeyboardInterrupt, Interrupted) as err:
        log(f"bench: interrupted ({err or 'SIGINT'}); stopping everything")
        code = 130
    except RuntimeError as err:
        log(f"bench: failed: {err}")
        code = 1
    finally:
        stop_all()
        if args.keep_tmp or code:
            log(f"bench: configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

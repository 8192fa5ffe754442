"""Gatewatch itself: is the observability pipeline keeping up (exports, drops, queues), are the worker
processes up, which versions run, which configuration each process runs and since when, and did reloads apply."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.promql import (BUILD_INFO, CONFIG_INFO, CONFIG_LOADED, CONFIG_RELOADS, TELEMETRY_DROPPED,
                               TELEMETRY_EXPORTED, TELEMETRY_QUEUE, PROCESS_CPU, PROCESS_RSS, PROCESS_START_TIME, RANGE,
                               TLS_CERT_EXPIRY, TLS_HANDSHAKE_FAILURES, TLS_HANDSHAKES, increase, rate, ratio, sel,
                               sum_, sum_rate)
from gatewatch.dashboards.promql import ADMIN_AUTH_FAILURES, DRAIN_CLOSED, DRAIN_STEPS
from gatewatch.telemetry.names import Label

S = Label.SIGNAL


TARGET = "instance, job"  # a scrape target: one Gatewatch process


def drop_share() -> str:
    """Share of telemetry items dropped (by signal): dropped / (exported + dropped). Both counters exist at 0 for
    every signal (and reason) from the start."""
    dropped = sum_rate(sel(TELEMETRY_DROPPED), S)
    return ratio(dropped, f"{sum_rate(sel(TELEMETRY_EXPORTED), S)} + {dropped}")


def config_loaded_per_process() -> str:
    """One series per process with its config version (the info metric's labels) whose value is when that config
    was loaded, in milliseconds (Grafana's date units)."""
    return f"{CONFIG_INFO} * on ({TARGET}) group_left () {CONFIG_LOADED} * 1000"


def build(opts) -> gd.Dashboard:  # noqa: ARG001
    d = P.new_dashboard("self", "Gatewatch / Gatewatch itself",
                        "The health of Gatewatch's own telemetry pipeline, workers and configuration.")
    d = d.with_row(gd.Row("Telemetry pipeline"))
    d = d.with_panel(P.timeseries(
        "Exported items/s by signal", "Spans and decision-log records exported successfully.",
        [P.prom(sum_rate(sel(TELEMETRY_EXPORTED), S), "{{signal}}")], "ops"))
    d = d.with_panel(P.timeseries(
        "Dropped items/s by signal and reason", "Items dropped: queue full (the collector is slower than "
        "traffic), export failed (the collector is down or refused), shutdown. Requests are never slowed "
        "down instead.",
        [P.prom(sum_rate(sel(TELEMETRY_DROPPED), S, Label.REASON), "{{signal}} {{reason}}")], "ops"))
    d = d.with_panel(P.timeseries(
        "Drop share by signal", "dropped / (exported + dropped).", [P.prom(drop_share(), "{{signal}}")],
        "percentunit"))
    d = d.with_panel(P.timeseries(
        "Export queue by signal and process", "Items waiting for export in each process (with the exporter "
        "process: the proxy's buffer plus the child's queues, reported about once a second). Items wait for the "
        "next export (every export_interval_s or batch_size), so the level rises and falls with each export — a "
        "sawtooth at this resolution is that cycle. A level that keeps rising means the exporter is falling behind.",
        [P.prom(f"sum by (instance, {S}) ({sel(TELEMETRY_QUEUE)})", "{{instance}} {{signal}}")], "short"))

    d = d.with_row(gd.Row("Processes and configuration"))
    d = d.with_panel(P.timeseries(
        "Process restarts", "Each Gatewatch process (every worker of `workers: N` is its own scrape target): how "
        "often it was started anew in the dashboard's range. A worker the supervisor keeps replacing shows here.",
        [P.prom(f"changes({sel(PROCESS_START_TIME)}[{RANGE}])", "{{instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "CPU and memory per process", "CPU seconds per second (one core = 1) and resident memory.",
        [P.prom(f"sum by (instance) ({rate(sel(PROCESS_CPU))})", "{{instance}} cpu"),
         P.prom(f"sum by (instance) ({sel(PROCESS_RSS)}) / 1e9", "{{instance}} rss GB")], "short"))
    d = d.with_panel(P.timeseries(
        "Config reloads by result", "Reloads applied or rejected (a rejected reload keeps the running config: "
        "its version below does not change).",
        [P.prom(sum_(increase(sel(CONFIG_RELOADS)), "instance", Label.RESULT), "{{instance}} {{result}}")],
        "short"))
    d = d.with_panel(P.table(
        "Running config version per process", "One row per Gatewatch process: the version of the configuration it "
        "runs (gatewatch.config.version, a short hash of the effective config — the same value is on every SERVER "
        "span and decision log it writes) and when that config was loaded (start or last successful reload). "
        "Processes of one deployment with different versions: a reload that did not reach all of them.",
        [P.prom(config_loaded_per_process(), instant=True, table=True)], "dateTimeAsIso",
        rename={"Value": "loaded at"}))
    d = d.with_panel(P.timeseries(
        "Processes per config version", "How many processes run each config version: a rollout or a reload shows "
        "as one version handing over to the next.",
        [P.prom(f"count without ({TARGET}) ({CONFIG_INFO})")], "short"))
    d = d.with_panel(P.timeseries(
        "Config age per process", "Time since each process loaded its running configuration; it drops to 0 at a "
        "start or a successful reload.",
        [P.prom(f"time() - {sel(CONFIG_LOADED)}", "{{instance}}")], "s"))
    d = d.with_row(gd.Row("TLS termination"))
    d = d.with_panel(P.timeseries(
        "Handshakes/s by listener and version", "TLS handshakes the listeners completed (new connections; a "
        "keep-alive connection shakes hands once).",
        [P.prom(sum_rate(sel(TLS_HANDSHAKES), Label.LISTENER, Label.TLS_VERSION),
                "{{gatewatch_listener}} TLS {{tls_protocol_version}}")], "ops"))
    d = d.with_panel(P.timeseries(
        "Failed handshakes/s by reason", "Why clients' handshakes failed: not_tls (plaintext on a TLS port), "
        "protocol_version / no_shared_cipher (an old client), server_cert_rejected (clients do not trust our "
        "certificate: a missing chain or an expired certificate), no_client_cert / client_cert_* (mTLS refusals), "
        "timeout (stalled clients), client_closed (a client gave up or refused our certificate without an alert).",
        [P.prom(sum_rate(sel(TLS_HANDSHAKE_FAILURES), Label.LISTENER, Label.REASON),
                "{{gatewatch_listener}} {{reason}}")], "ops"))
    d = d.with_panel(P.table(
        "Days until each served certificate expires", "Per listener, certificate (its CN or first DNS name) and "
        "serial: the soonest expiry over all processes. A reload takes up rotated files; the replaced certificate's "
        "row disappears.",
        [P.prom(f"min by ({Label.LISTENER}, {Label.CERTIFICATE}, {Label.SERIAL}) ({TLS_CERT_EXPIRY} - time()) / 86400",
                instant=True, table=True)], "d", rename={"Value": "days left"}))
    d = d.with_row(gd.Row("Drain and admin API"))
    d = d.with_panel(P.timeseries(
        "Drain steps by process", "SIGTERM drains (docs/operations.md \"Rolling restarts\") and the steps they "
        "reached: started (/readyz answers 503), stopped_accepting, then drained (every connection ended in "
        "time) or grace_expired (drain.grace_s ran out and the connections left were cut: "
        "GatewatchDrainGraceExpired).",
        [P.prom(sum_(increase(sel(DRAIN_STEPS)), "instance", Label.STEP), "{{instance}} {{step}}")], "short"))
    d = d.with_panel(P.timeseries(
        "Connections closed by drains, by reason", "How client connections ended during drains, per listener: "
        "after_response (Connection: close on its last response), idle (closed after drain.idle_close_s), "
        "deadline (still busy when the grace ran out: cut, the client saw an error or a reset).",
        [P.prom(sum_(increase(sel(DRAIN_CLOSED)), Label.LISTENER, Label.REASON),
                "{{gatewatch_listener}} {{reason}}")], "short", stack=True))
    d = d.with_panel(P.timeseries(
        "Admin API auth failures/s by reason", "Admin requests refused (RFC 6750 §3.1): missing (no bearer "
        "token, 401), malformed (400), invalid (a wrong token, 401 — a burst of these is someone guessing: "
        "GatewatchAdminAuthFailures), cross_site (a browser request from another origin, 403).",
        [P.prom(sum_rate(sel(ADMIN_AUTH_FAILURES), "instance", Label.REASON), "{{instance}} {{reason}}")],
        "ops", stack=True))
    d = d.with_panel(P.table(
        "Running processes and versions", "One row per Gatewatch process Prometheus scrapes, with its version "
        "(the labels of the build info metric).",
        [P.prom(BUILD_INFO, instant=True, table=True)], w=24, h=5))
    return d

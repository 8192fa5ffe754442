"""`gatewatch demo` as a user runs it: two tiers, three backends, traffic, a summary, telemetry to a collector,
and no process left behind."""

from __future__ import annotations

import os
import subprocess
import signal
import sys
import collections

import psutil


def test_demo_delivers_two_tier_traces_and_logs_and_cleans_up(otlp, tmp_path):
    env = {**os.environ, **otlp.env("http/protobuf"), "PYTHONUNBUFFERED": "1"}
    before = {p.pid for p in psutil.process_iter()}
    proc = subprocess.run([sys.executable, "-m", "gatewatch", "demo", "--duration", "6", "--rps", "30",
                           "--workdir", str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "final summary" in out
    for needle in ("orders", "checkout", "catalog", "demo-a", "demo-b", "demo-c", "p50", "p99", "recent trace ids"):
        assert needle in out, needle

    def complete_traces(spans):
        by_trace = collections.defaultdict(set)
        for s in spans:
            layer = s["attributes"].get("gatewatch.layer")
            by_trace[s["trace_id"]].add((s["kind"], layer if layer else s["resource"]["service.name"]))
        want = {("SERVER", "edge"), ("CLIENT", "edge"), ("SERVER", "balancer"), ("CLIENT", "balancer"),
                ("SERVER", "demo-backend")}
        return {t for t, kinds in by_trace.items() if want <= kinds}

    assert otlp.data.wait_for(lambda spans, logs: len(complete_traces(spans)) >= 10, timeout_s=10)
    spans, logs = otlp.data.snapshot()
    traces = complete_traces(spans)
    correlated = {r["trace_id"] for r in logs if r["event_name"] == "gatewatch.decision.pick"} & traces
    assert len(correlated) >= 10
    services = {s["resource"]["service.name"] for s in spans}
    assert services == {"gatewatch-edge", "gatewatch-balancer", "demo-backend"}
    instances = {s["resource"].get("service.instance.id") for s in spans if s["resource"]["service.name"] == "demo-backend"}
    assert instances == {"demo-a", "demo-b"}  # zone-a takes the traffic; demo-c (zone-b) is the failover priority
    # Nothing orphaned: no process is left running in the demo's working directory (they all inherit it).
    leftover = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if p.pid not in before and p.info["cwd"] == str(tmp_path):
            leftover.append(p.info["cmdline"])
    assert not leftover, leftover


def test_demo_ctrl_c_stops_everything(tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen([sys.executable, "-m", "gatewatch", "demo", "--rps", "10", "--workdir", str(tmp_path)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list = []
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and not line.startswith("demo:"):
            line = proc.stdout.readline()
        assert line.startswith("demo:"), proc.stderr.read() if proc.poll() is not None else "no banner"
        children = psutil.Process(proc.pid).children(recursive=True)
        cli = [c for c in children if " -m gatewatch " in " ".join(c.cmdline()) + " "]
        assert len(cli) == 5  # three backends, balancer, edge (each gatewatch tier also has an exporter child)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "final summary" in out
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, [p.pid for p in alive]
        # Without a collector the traces and decision logs are on disk, as documented.
        files = sorted(p.name for p in (tmp_path / "gatewatch-telemetry").iterdir())
        assert "gatewatch-edge.traces.jsonl" in files and "gatewatch-balancer.logs.jsonl" in files
        assert (tmp_path / "gatewatch-telemetry" / "gatewatch-edge.traces.jsonl").stat().st_size > 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:  # a failed assertion must not leave the demo's tiers running
            if child.is_running():
                child.kill()


def test_demo_incident_fails_over_without_client_errors(otlp, tmp_path):
    """The demo's scheduled incident (demo-b killed, restarted later), brought forward to 2 s: clients see no
    error, zone-b takes over, and the balancer reports the transitions.

    One exception, by design: a POST /api/checkout that demo-b had already received when it was killed may have
    been acted on, so it is not retried (RFC 9110 §9.2.2) and its client gets the 502. Each such 502 must match an
    `upstream_error` of demo-b in the balancer's own table; a connect error (retried) or anything else is a
    failure. (On a loaded machine a POST is now and then in flight at the kill; the one 502 this test once saw
    is most likely that: the failure was not kept.)"""
    import re

    env = {**os.environ, **otlp.env("http/protobuf"), "PYTHONUNBUFFERED": "1", "GATEWATCH_DEMO_INCIDENT_AT": "2"}
    proc = subprocess.run([sys.executable, "-m", "gatewatch", "demo", "--duration", "10", "--rps", "30",
                           "--workdir", str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = proc.stdout.rsplit("final summary", 1)[1]
    assert "incident: demo-b killed at 2s" in proc.stdout
    statuses = re.search(r"statuses \{([^}]*)\}, transport errors (\d+)", final)
    assert statuses.group(2) == "0"
    seen = {int(k): int(n) for k, n in re.findall(r"(\d+): (\d+)", statuses.group(1))}
    assert set(seen) <= {200, 404, 502}, final
    in_flight_at_kill = sum(int(n) for n in re.findall(r"^\s+demo-b\s+upstream_error\s+(\d+)", final, re.M))
    assert seen.get(502, 0) <= in_flight_at_kill, final
    assert otlp.data.wait_for(lambda spans, logs: any(
        r["event_name"] == "gatewatch.health.transition" and r["attributes"].get("gatewatch.instance") == "demo-b"
        for r in logs) and any(s["resource"].get("service.instance.id") == "demo-c" for s in spans), timeout_s=10)


def test_demo_incident_puts_the_failover_alert_in_pending(tmp_path):
    """The demo's scheduled crash, against a real Prometheus scraping the demo's admin ports with the generated
    rules: nothing pending before the crash, GatewatchFailoverSpike pending for the demo's pool after it."""
    import json
    import time

    from gatewatch.dashboards.build import RULES_FILE, render_all
    from gatewatch.dashboards.options import DEFAULT
    from tests.dashboards.prom import Prometheus

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GATEWATCH_DEMO_INCIDENT_AT": "12"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen([sys.executable, "-m", "gatewatch", "demo", "--rps", "40", "--workdir", str(tmp_path)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    prom = None
    try:
        deadline = time.monotonic() + 30
        ready = [tmp_path / "edge.ready.json", tmp_path / "balancer.ready.json"]
        while time.monotonic() < deadline and not all(f.exists() for f in ready):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        admins = [json.loads(f.read_text())["admin"] for f in ready]
        rules = tmp_path / "rules.yml"
        rules.write_text(render_all(DEFAULT)[RULES_FILE])
        prom = Prometheus(tmp_path, {"gatewatch-demo": admins}, [rules])
        prom.wait_ready()
        started = time.monotonic()
        while time.monotonic() - started < 8:  # before the crash (at 12 s of demo time): nothing pending
            assert not [a for a in prom.active_alerts() if a["labels"]["alertname"] == "GatewatchFailoverSpike"]
            time.sleep(1)
        deadline = time.monotonic() + 60
        spike = []
        while time.monotonic() < deadline and not spike:
            spike = [a for a in prom.active_alerts() if a["labels"]["alertname"] == "GatewatchFailoverSpike"]
            time.sleep(1)
        assert spike, "the demo's crash did not put GatewatchFailoverSpike in pending"
        assert spike[0]["labels"]["gatewatch_pool"] == "shop" and spike[0]["state"] in ("pending", "firing")
    finally:
        if prom is not None:
            prom.stop()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

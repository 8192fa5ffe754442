"""`workers: N`: a supervisor process that starts N worker processes sharing the listeners (SO_REUSEPORT).

Each worker is a full Gatewatch (`gatewatch run` with a hidden `--worker I`): its own event loop, engine,
telemetry pipeline (resource attribute `gatewatch.worker=I`) and admin listener on the configured admin
port + I (so Prometheus scrapes every worker; port 0 stays 0). For listeners configured with port 0 the
supervisor picks one port first (a bound, non-listening SO_REUSEPORT socket it holds until the workers are
up) so that all workers join the same port. A worker that dies is restarted after a second; SIGTERM/SIGINT
stop every worker (each drains) and the supervisor exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gatewatch.config import GatewatchConfig, parse_address

log = logging.getLogger("gatewatch.supervisor")


def _reserve_ports(cfg: GatewatchConfig) -> tuple[dict[str, int], list[socket.socket]]:
    ports: dict[str, int] = {}
    held: list[socket.socket] = []
    for section in (cfg.edge, cfg.balancer):
        for lst in (section.listeners if section else ()):
            host, port = parse_address(lst.address)
            if port:
                continue
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, 0))
            ports[lst.name] = s.getsockname()[1]
            held.append(s)
    return ports, held


def run_workers(config_path: str, cfg: GatewatchConfig, ready_file: str | None, log_level: str) -> int:
    ports, held = _reserve_ports(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="gatewatch-workers-"))
    stopping = False

    def spawn(i: int) -> subprocess.Popen:
        argv = [sys.executable, "-P", "-m", "gatewatch", "run", "-c", config_path, "--worker", str(i),
                "--ports", json.dumps(ports), "--ready-file", str(tmp / f"worker-{i}.json"), "--log-level", log_level]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    workers: dict[int, subprocess.Popen] = {}

    def on_hup(signum, frame):  # noqa: ARG001 - every worker re-reads the file itself
        for w in workers.values():
            if w.poll() is None:
                w.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    workers = {i: spawn(i) for i in range(cfg.workers)}
    deadline = time.monotonic() + 30
    infos: dict[int, dict] = {}
    while len(infos) < cfg.workers and time.monotonic() < deadline and not stopping:
        for i in range(cfg.workers):
            f = tmp / f"worker-{i}.json"
            if i not in infos and f.exists():
                infos[i] = json.loads(f.read_text())
            if workers[i].poll() is not None and i not in infos:
                stopping = True
        time.sleep(0.05)
    for s in held:
        s.close()
    if len(infos) < cfg.workers:
        log.error("workers did not start (%d of %d ready)", len(infos), cfg.workers)
        _stop_all(workers)
        return 1
    info = {"pid": os.getpid(), "listeners": infos[0]["listeners"], "admin": infos[0]["admin"],
            "telemetry": infos[0]["telemetry"], "service_name": infos[0]["service_name"],
            "workers": [{"index": i, "pid": infos[i]["pid"], "admin": infos[i]["admin"]} for i in sorted(infos)]}
    log.info("gatewatch ready with %d workers: %s", cfg.workers, json.dumps(info))
    if ready_file:
        Path(ready_file + ".tmp").write_text(json.dumps(info))
        os.replace(ready_file + ".tmp", ready_file)
    while not stopping:
        time.sleep(0.2)
        for i, p in list(workers.items()):
            if p.poll() is not None and not stopping:
                log.error("worker %d exited with %s; restarting it", i, p.returncode)
                time.sleep(1.0)
                workers[i] = spawn(i)
    _stop_all(workers)
    return 0


def _stop_all(workers: dict[int, subprocess.Popen]) -> None:
    for p in workers.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in workers.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

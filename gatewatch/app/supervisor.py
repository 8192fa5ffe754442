"""`workers: N`: a supervisor process that starts N worker processes sharing the listeners (SO_REUSEPORT).

Each worker is a full Gatewatch (`gatewatch run` with a hidden `--worker I`): its own event loop, engine,
telemetry pipeline (resource attribute `gatewatch.worker=I`) and admin listener on the configured admin
port + I (so Prometheus scrapes every worker; port 0 stays 0). For listeners configured with port 0 the
supervisor picks one port first (a bound, non-listening SO_REUSEPORT socket it holds until the workers are
up) so that all workers join the same port. A worker that dies is restarted after a second; SIGTERM/SIGINT
stop every worker (each drains) and the supervisor exits 0.

SIGUSR2 is a rolling restart (docs/operations.md "Rolling restarts"): the config file is validated first (a
broken file, or one that changes `workers` or the listeners' names or addresses, is refused and nothing is
touched); then, one index at a time, a new worker is started beside the old one (it joins the listener and admin
ports with SO_REUSEPORT), and once it is ready the old one gets SIGTERM and drains (`drain` in the config) while
the new one takes the new connections. A new worker that does not become ready within `ROLL_READY_TIMEOUT_S` is stopped
and the roll ends there: the old workers keep serving. The `--ready-file` is rewritten with the new pids.
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

from gatewatch.config import ConfigError, GatewatchConfig, load_config, parse_address

log = logging.getLogger("gatewatch.supervisor")
READY_TIMEOUT_S = 30.0  # a worker must write its ready file within this at start
ROLL_READY_TIMEOUT_S = 60.0  # ... and in a rolling restart, where it starts beside busy workers
EXIT_MARGIN_S = 10.0  # beyond the drain (readiness delay + grace): telemetry flush, interpreter exit


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


def stop_bound_s(cfg: GatewatchConfig) -> float:
    """How long a worker may take to exit after SIGTERM before it is killed."""
    return cfg.drain.readiness_delay_s + cfg.drain.grace_s + EXIT_MARGIN_S


def roll_blockers(old: GatewatchConfig, new: GatewatchConfig) -> list[str]:
    """What a rolling restart cannot change (the supervisor's own shape: how many workers, which ports)."""
    problems = []
    if old.workers != new.workers:
        problems.append(f"workers: {old.workers} -> {new.workers}; changing the number of workers takes a full "
                        "restart of the supervisor")
    for name in ("edge", "balancer"):
        a, b = getattr(old, name), getattr(new, name)
        addrs = lambda sec: [(lst.name, lst.address) for lst in sec.listeners] if sec else []
        if addrs(a) != addrs(b):
            problems.append(f"{name}.listeners: names or addresses changed; the new workers would not share the "
                            "old ones' ports: this takes a full restart of the supervisor")
    return problems


class Supervisor:
    def __init__(self, config_path: str, cfg: GatewatchConfig, ready_file: str | None, log_level: str):
        self.config_path = config_path
        self.cfg = cfg
        self.ready_file = ready_file
        self.log_level = log_level
        self.ports, self._held = _reserve_ports(cfg)
        self.tmp = Path(tempfile.mkdtemp(prefix="gatewatch-workers-"))
        self.workers: dict[int, subprocess.Popen] = {}
        self.infos: dict[int, dict] = {}
        self.stopping = False
        self.roll_requested = False
        self._generation = 0

    # --- processes ---

    def spawn(self, i: int) -> tuple[subprocess.Popen, Path]:
        self._generation += 1
        ready = self.tmp / f"worker-{i}-g{self._generation}.json"
        argv = [sys.executable, "-P", "-m", "gatewatch", "run", "-c", self.config_path, "--worker", str(i),
                "--ports", json.dumps(self.ports), "--ready-file", str(ready), "--log-level", self.log_level]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL), ready

    def wait_ready(self, procs: dict[int, tuple[subprocess.Popen, Path]],
                   timeout_s: float = READY_TIMEOUT_S) -> dict[int, dict]:
        """Ready infos of `procs` (index -> (process, ready file)), until all are ready, one exits, the timeout
        passes or a stop is asked for."""
        infos: dict[int, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(infos) < len(procs) and time.monotonic() < deadline and not self.stopping:
            for i, (p, ready) in procs.items():
                if i not in infos and ready.exists():
                    infos[i] = json.loads(ready.read_text())
                elif i not in infos and p.poll() is not None:
                    return infos
            time.sleep(0.05)
        return infos

    def stop_procs(self, procs: list[subprocess.Popen], bound_s: float | None = None) -> None:
        bound_s = stop_bound_s(self.cfg) if bound_s is None else bound_s
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + bound_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d still running %.0f s after SIGTERM; killing it", p.pid, bound_s)
                p.kill()
                p.wait(5)

    def write_ready(self) -> dict:
        first = self.infos[min(self.infos)]
        info = {"pid": os.getpid(), "listeners": first["listeners"], "admin": first["admin"],
                "telemetry": first["telemetry"], "service_name": first["service_name"], "build": first["build"],
                "workers": [{"index": i, "pid": self.infos[i]["pid"], "admin": self.infos[i]["admin"]}
                            for i in sorted(self.infos)]}
        if self.ready_file:
            Path(self.ready_file + ".tmp").write_text(json.dumps(info))
            os.replace(self.ready_file + ".tmp", self.ready_file)
        return info

    # --- the rolling restart ---

    def roll(self) -> bool:
        """Replace every worker, one at a time (see the module docstring). True when all were replaced."""
        try:
            new_cfg = load_config(self.config_path)
            problems = roll_blockers(self.cfg, new_cfg)
        except ConfigError as err:
            problems = err.problems
        if problems:
            log.error("rolling restart refused, the workers keep running: %s", "; ".join(problems))
            return False
        # The old workers drain with the settings they were started with.
        old_bound = max(stop_bound_s(self.cfg), stop_bound_s(new_cfg))
        self.cfg = new_cfg
        started = time.monotonic()
        log.info("rolling restart: replacing %d workers one at a time", len(self.workers))
        for i in sorted(self.workers):
            if self.stopping:
                return False
            old = self.workers[i]
            t0 = time.monotonic()
            new, ready = self.spawn(i)
            info = self.wait_ready({i: (new, ready)}, ROLL_READY_TIMEOUT_S).get(i)
            if info is None:
                log.error("rolling restart stopped: the new worker %d (pid %d) did not become ready within %.0f s "
                          "(exit %s); worker pid %d keeps serving", i, new.pid, ROLL_READY_TIMEOUT_S, new.poll(),
                          old.pid)
                self.stop_procs([new])
                return False
            self.workers[i], self.infos[i] = new, info
            self.write_ready()
            log.info("rolling restart: worker %d pid %d ready; draining pid %d", i, new.pid, old.pid)
            self.stop_procs([old], old_bound)
            log.info("rolling restart: worker %d replaced (pid %d -> %d) in %.1f s, old exit %s", i, old.pid,
                     new.pid, time.monotonic() - t0, old.returncode)
        log.info("rolling restart done in %.1f s", time.monotonic() - started)
        return True

    # --- main loop ---

    def run(self) -> int:
        def on_stop(signum, frame):
            self.stopping = True

        def on_hup(signum, frame):
            for w in self.workers.values():
                if w.poll() is None:
                    w.send_signal(signal.SIGHUP)

        def on_usr2(signum, frame):
            self.roll_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR2, on_usr2)
        first = {i: self.spawn(i) for i in range(self.cfg.workers)}
        self.workers = {i: p for i, (p, _) in first.items()}
        self.infos = self.wait_ready(first)
        for s in self._held:
            s.close()
        if len(self.infos) < self.cfg.workers:
            log.error("workers did not start (%d of %d ready)", len(self.infos), self.cfg.workers)
            self.stop_procs(list(self.workers.values()))
            return 1
        log.info("gatewatch ready with %d workers: %s", self.cfg.workers, json.dumps(self.write_ready()))
        while not self.stopping:
            time.sleep(0.2)
            if self.roll_requested:
                self.roll_requested = False
                self.roll()
            for i, p in list(self.workers.items()):
                if p.poll() is not None and not self.stopping:
                    log.error("worker %d exited with %s; restarting it", i, p.returncode)
                    time.sleep(1.0)
                    self.workers[i], ready = self.spawn(i)
                    info = self.wait_ready({i: (self.workers[i], ready)}).get(i)
                    if info is not None:
                        self.infos[i] = info
                        self.write_ready()
        self.stop_procs(list(self.workers.values()))
        return 0


def run_workers(config_path: str, cfg: GatewatchConfig, ready_file: str | None, log_level: str) -> int:
    return Supervisor(config_path, cfg, ready_file, log_level).run()

"""`Soak`: everything one soak run does, in order.

`setup()` starts Redis, the JWKS endpoint, the OTLP sink, four backends and gatewatch (`workers: 2`) and checks
that every route answers; `run()` starts the load client and the monitor, walks the schedule (each phase's
actions at their offsets, recorded in `events` with the time they really happened), stops the client, waits for
gatewatch's telemetry to settle, takes the final scrapes and stops everything. The analysis reads what it leaves:
the client's request lines, `events`, the monitor's series and the logs in the work directory.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import time
from pathlib import Path

from harness.common import HTTP, log
from harness.host import free_port
from harness.procs import Proc

from . import gateway as gwmod
from .gateway import Gateway, get_json, post
from .jwks import make_key
from .monitor import Monitor
from .peers import Backend, Jwks, Sink
from .redis import Redis
from .schedule import PHASES, durations

BACKENDS = ("b0", "b1", "b2", "b3")


class Soak:
    def __init__(self, args, workdir: Path, env: dict[str, str]):
        self.args = args
        self.workdir = workdir
        self.env = env
        self.events: list[dict] = []  # {"t", "action", "detail"}
        self.phase_times: list[tuple[str, float, float]] = []  # (name, start, end), monotonic
        self.reloads: list[dict] = []
        self.sigterm: dict = {}
        self.notes: list[str] = []
        self.wall_minus_mono = time.time() - time.monotonic()  # to put gatewatch's log times on our clock

    # --- setup ---

    def setup(self) -> None:
        wd, env = self.workdir, self.env
        self.redis = Redis(wd, free_port())
        self.redis.start()
        jwks_file, sign = make_key(wd)
        self.tokens = [sign(f"user-{i}") for i in range(4)]
        self.jwks = Jwks(free_port(), wd, env, jwks_file)
        self.jwks.start()
        self.sink = Sink(free_port(), wd, env)
        self.sink.start()
        self.backends = {name: Backend(name, free_port(), wd, env) for name in BACKENDS}
        for b in self.backends.values():
            b.start()
        admin = _two_free_ports()
        pairs = [(n, b.port) for n, b in self.backends.items()]
        self.gw = Gateway(wd, env, admin, lambda gen: gwmod.config(
            gen, admin, self.sink.port, self.redis.url, self.jwks.url, pairs, wd))
        self.gw.start()
        self.monitor = Monitor(self.gw, self.sink)
        self._check_routes()

    def _check_routes(self) -> None:
        import urllib.request

        host, port = self.gw.address
        for route, headers in self.probe_requests():
            deadline = time.monotonic() + 20
            while True:
                try:
                    req = urllib.request.Request(f"http://{host}:{port}/{route}/check", headers=headers)
                    with HTTP.open(req, timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError as err:  # urllib's errors are OSErrors
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"route {route} does not answer 200: {err}\n{self.gw.log_text()[-3000:]}")
                time.sleep(0.2)

    def probe_requests(self) -> list[tuple[str, dict]]:
        return [("plain", {}), ("limited", {"X-Client": "probe"}), ("quota", {"X-Client": "probe"}),
                ("secure", {"Authorization": f"Bearer {self.tokens[0]}"})]

    def client_spec(self) -> dict:
        host, port = self.gw.address
        a = self.args
        bearer = [{"name": f"token{i}", "weight": 1, "headers": {"Authorization": f"Bearer {t}"}}
                  for i, t in enumerate(self.tokens)]
        return {"host": host, "port": port, "concurrency": a.concurrency, "rate": a.rate, "max_per_conn": 100,
                "timeout_s": 30.0, "connect_timeout_s": 3.0, "routes": [
                    {"route": "plain", "path": "/plain/items/{n}", "weight": 45},
                    {"route": "limited", "path": "/limited/items/{n}", "weight": 20, "variants": [
                        {"name": "hot", "weight": 25, "headers": {"X-Client": "hot"}},
                        {"name": "normal", "weight": 75, "headers": {"X-Client": "c{conn}"}}]},
                    {"route": "quota", "path": "/quota/items/{n}", "weight": 10, "variants": [
                        {"name": "normal", "weight": 1, "headers": {"X-Client": "q{conn}"}}]},
                    {"route": "secure", "path": "/secure/items/{n}", "weight": 25, "variants": bearer},
                ]}

    # --- the run ---

    def run(self) -> None:
        spec_path = self.workdir / "client.json"
        spec_path.write_text(json.dumps(self.client_spec()))
        self.requests_path = self.workdir / "requests.tsv"
        self.monitor.sample()  # a first sample before the traffic: every phase's deltas have a start
        self.monitor.start()
        self.client = Proc("client", [sys.executable, "-m", "faults.client", "--spec", str(spec_path), "--out",
                                      str(self.requests_path)], self.workdir, env=self.env)
        lengths = durations(self.args.duration)
        self.t_start = time.monotonic()
        log(f"soak: {len(PHASES)} phases, {sum(lengths):.0f} s of traffic at {self.args.rate or 'unpaced'} req/s, "
            f"concurrency {self.args.concurrency}")
        for phase, length in zip(PHASES, lengths):
            start = time.monotonic()
            log(f"soak: [{start - self.t_start:6.1f}s] {phase.name}: {phase.injected}")
            for offset, action in phase.actions:
                wait = start + offset * length - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.act(action)
            self._sleep_until(start + length)
            self.phase_times.append((phase.name, start, time.monotonic()))
            if not self.client.alive():
                raise RuntimeError(f"the load client died:\n{self.client.log_text()[-2000:]}")
        self.cpu = self.cpu_by_component()
        self.client.popen.send_signal(signal.SIGTERM)
        self.client.popen.wait(40)
        self.t_end = time.monotonic()
        self.settle()
        self.monitor.stop()
        self.final = {i: gwmod.scrape(a) for i, a in enumerate(self.gw.admins)}

    def cpu_by_component(self) -> dict[str, float]:
        """CPU seconds (user + system) of everything the soak started, by component, at the end of the traffic
        (the peers' earlier incarnations, killed on purpose, are not included), and the machine's busy share."""
        import psutil
        from harness.procs import RUNNING

        out: dict[str, float] = collections.Counter()
        for p in RUNNING:
            if p is self.gw.proc:
                continue
            group = p.name.rsplit("-", 1)[0]
            group = "backends" if group in self.backends else group
            for q in p.tree():
                try:
                    t = q.cpu_times()
                    out[group] += t.user + t.system
                except psutil.Error:
                    pass
        for r in self.monitor.rss.values():
            out["gatewatch " + r.role.split("-")[0] + "s"] += r.cpu_s
        (t0, c0), (t1, c1) = self.monitor.cpu_series[0], self.monitor.cpu_series[-1]
        out["(machine busy, cores)"] = (c1[0] - c0[0]) / (t1 - t0) if t1 > t0 else 0.0
        out["(wall s)"] = t1 - t0
        return dict(out)

    def _sleep_until(self, t: float) -> None:
        while (left := t - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))

    def event(self, action: str, detail: str = "", t: float | None = None) -> None:
        self.events.append({"t": time.monotonic() if t is None else t, "action": action, "detail": detail})

    def act(self, action: str) -> None:
        """Run one scheduled action; its event carries the time it *started* (a request cut by a kill ends
        between the signal and the event, and must fall inside the kill's window)."""
        b = self.backends
        t = time.monotonic()
        if action == "sink_hang":
            self.sink.hang()
        elif action == "sink_kill":
            self.sink.kill()
        elif action == "sink_start":
            self.sink.start()
        elif action == "redis_hang":
            self.redis.hang()
        elif action == "redis_stop":
            self.redis.resume()
            self.redis.stop()
        elif action == "redis_start":
            self.redis.start()
        elif action == "jwks_hang":
            self.jwks.hang()
        elif action == "jwks_resume":
            self.jwks.resume()
        elif action.startswith("kill_"):
            for name in action[5:].split("_"):
                b[name].kill()
        elif action.startswith("start_"):
            for name in action[6:].split("_"):
                b[name].start()
        elif action == "reload_sighup":
            self.reload("sighup")
            return
        elif action == "reload_admin":
            self.reload("admin")
            return
        elif action == "sigterm_worker_1":
            self.sigterm_worker(1)
            return
        else:
            raise ValueError(action)
        self.event(action, t=t)

    def reload(self, how: str) -> None:
        gen = self.gw.gen + 1
        self.gw.write_config(gen)
        t = time.monotonic()
        rec = {"t": t, "how": how, "gen": gen, "answers": {}}
        if how == "sighup":
            os.kill(self.gw.proc.pid, signal.SIGHUP)
        else:
            for i, a in enumerate(self.gw.admins):
                rec["answers"][i] = post(f"http://{a}/reload")
        gens: dict[int, int | None] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until every worker runs the new file
            gens = {i: _gen_of(get_json(f"http://{a}/config") or {}) for i, a in enumerate(self.gw.admins)}
            if all(g == gen for g in gens.values()):
                break
            time.sleep(0.1)
        rec["gens"] = gens
        rec["applied_s"] = time.monotonic() - t
        self.reloads.append(rec)
        self.event(f"reload_{how}", f"gen {gen}", t=t)

    def sigterm_worker(self, index: int) -> None:
        """SIGTERM one worker; scrape its admin port every 0.1 s while it drains (the last scrape before it
        stops answering is the last word of that incarnation's counters); note when it exits and when the
        supervisor's replacement is ready."""
        import psutil

        w = self.gw.workers()[index]
        first = self.monitor.scrape_worker(index)
        old_start = first["start_time"] if first else None
        t = time.monotonic()
        os.kill(w.pid, signal.SIGTERM)
        self.event(f"sigterm_worker_{index}", f"pid {w.pid}")
        info = {"t": t, "pid": w.pid, "old_start": old_start}
        deadline = t + 30
        while time.monotonic() < deadline:
            m = self.monitor.scrape_worker(index, timeout_s=0.5)
            now = time.monotonic()
            try:
                alive = w.is_running() and w.status() != "zombie"
            except psutil.Error:
                alive = False
            if not alive and "exited_s" not in info:
                info["exited_s"] = now - t
            if m is not None and m["start_time"] != old_start:
                info["replacement_ready_s"] = now - t
                replacement = self.gw.workers().get(index)
                info["new_pid"] = replacement.pid if replacement else None
                break
            if m is None and "admin_gone_s" not in info:
                info["admin_gone_s"] = now - t
            time.sleep(0.1)
        self.sigterm = info

    def settle(self, timeout_s: float = 30.0) -> None:
        """Until every worker's telemetry queue is empty and gatewatch's and the sink's counts stop moving."""
        deadline = time.monotonic() + timeout_s
        last, stable = None, 0
        while time.monotonic() < deadline:
            self.monitor.sample()
            ms = [self.monitor.scrape_worker(i) for i in range(2)]
            key = (tuple((sum(m["exported"].values()), sum(m["dropped"].values())) if m else None for m in ms),
                   self.sink.totals())
            if all(m and sum(m["queue"].values()) == 0 for m in ms) and key == last:
                stable += 1
                if stable >= 2:
                    self.settled = True
                    return
            else:
                stable = 0
            last = key
            time.sleep(1.0)
        self.settled = False
        self.notes.append(f"telemetry did not settle within {timeout_s:.0f} s after the load stopped")

    def stop(self) -> None:
        """Stop gatewatch first (it drains and flushes), then the peers."""
        t = time.monotonic()
        if getattr(self, "gw", None) and self.gw.proc:
            self.gw.proc.stop(20)
            self.gw_stop_s = time.monotonic() - t
            self.gw_exit = self.gw.proc.popen.returncode


def _gen_of(cfg: dict) -> int | None:
    for r in (cfg.get("edge") or {}).get("routes", []):
        for p in r.get("policies", []):
            if p.get("name") == "gen":
                return int(p["set"]["X-Soak-Gen"])
    return None


def _two_free_ports() -> int:
    """A port p with p+1 free too (worker i serves the admin API on the admin port + i)."""
    import socket

    for _ in range(200):
        p = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports for the admin listeners")

"""Rolling restarts under load lose no request (docs/operations.md "Rolling restarts").

A few keep-alive clients send GETs back to back, without any retry, and count every failure (a reset, a
connection closed before the answer, a non-2xx). Meanwhile `workers: 2` is rolled with SIGUSR2 (each worker is
replaced by a new one, then drained), or a second single process on the same port (`reuse_port`) takes over from a
first one that gets SIGTERM. A draining process's /readyz must say 503 while its listeners are still open
(`drain.readiness_delay_s`) before it closes them.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Self

import psutil

from tests.integration.test_two_tier import edge_cfg
from tests.support.net import closed_port

CLIENTS = 4
PAUSE_S = 0.02  # between a client's requests: sustained load that leaves CPU for starting the new processes
DRAIN = {"readiness_delay_s": 1.0, "grace_s": 15.0, "idle_close_s": 5.0}


class Load:
    """CLIENTS threads, each one keep-alive connection (re-opened when an answer says `Connection: close`)."""

    def __init__(self, address: str):
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                conn.request("GET", f"/api/orders/{index}-{n}")
                resp = conn.getresponse()
                resp.read()
                failed = None if resp.status == 200 else f"status {resp.status}"
                if resp.will_close:
                    conn.close()  # the next request opens a new connection
            except (OSError, http.client.HTTPException) as err:
                failed = f"{type(err).__name__}: {err}"
                conn.close()
            with self.lock:
                if failed:
                    self.failures.append(failed)
                else:
                    self.ok += 1
            time.sleep(PAUSE_S)
        conn.close()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while self.ok < count and time.monotonic() < deadline:
            time.sleep(0.05)


class ReadyWatch:
    """Polls one process's admin /readyz until it stops answering: (status, draining, listeners open) changes."""

    def __init__(self, admin: str):
        self.admin = admin
        self.seen: list[tuple[int, bool, bool]] = []
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        # The caller signals the process next: /readyz must have answered once before, or the first state seen
        # could already be the draining one (a race that depends only on thread scheduling).
        assert self.first.wait(30), f"{admin}/readyz never answered"

    def _run(self) -> None:
        deadline = time.monotonic() + 180  # a cap: the roll reaches worker 0 once its replacement is ready
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.admin}/readyz", timeout=2) as r:
                    status, body = r.status, json.loads(r.read())
            except urllib.error.HTTPError as err:
                status, body = err.code, json.loads(err.read())
            except OSError:
                self.first.set()  # nothing more to wait for: join() shows what was seen
                return  # the process has exited
            state = (status, body["draining"], bool(body["listeners"]))
            if not self.seen or self.seen[-1] != state:
                self.seen.append(state)
            self.first.set()
            time.sleep(0.02)

    def join(self) -> list[tuple[int, bool, bool]]:
        self.thread.join(180)
        return self.seen


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gatewatch's upstream pool expects

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def backend():
    """The upstream, in this process (one process fewer to start): its URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def assert_ready_then_draining(seen: list[tuple[int, bool, bool]]) -> None:
    """(status, draining, listeners open) as /readyz said: ready, then 503 with the listeners still open, then
    (if /readyz was asked in time) 503 with none."""
    assert seen[:2] == [(200, False, True), (503, True, True)], seen
    assert seen[2:] in ([], [(503, True, False)]), seen


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_sigusr2_replaces_every_worker_under_load_without_a_failed_request(cluster):
    with backend() as url:
        _roll_workers(cluster, url)


def _roll_workers(cluster, url: str) -> None:
    cfg = edge_cfg(upstream_url=url)
    cfg.update(workers=2, drain=DRAIN)
    edge = cluster.gatewatch("edge", cfg)
    old = {w["index"]: w for w in edge.info["workers"]}
    with Load(edge.listener("public")) as load:
        load.wait_for(200)
        watch = ReadyWatch(old[0]["admin"])
        edge.popen.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 180  # a cap only: a new worker starts slowly on a busy 2-core machine
        while time.monotonic() < deadline and not all(gone(w["pid"]) for w in old.values()):
            time.sleep(0.1)
        assert all(gone(w["pid"]) for w in old.values()), "the old workers did not exit"
        served = load.ok
        load.wait_for(served + 200)  # the new workers serve
    assert load.failures == [], load.failures[:10]
    assert load.ok >= served + 200
    new = json.loads(edge.ready_file.read_text())["workers"]
    assert {w["index"] for w in new} == {0, 1}
    assert not {w["pid"] for w in new} & {w["pid"] for w in old.values()}
    # Worker 0's readiness went 503 while its listener was still open (the listener closing comes after; the
    # drain then takes milliseconds, so /readyz may not be asked in between: tests/io/test_drain.py checks it).
    assert_ready_then_draining(watch.join())
    assert edge.stop() == 0


def test_a_second_process_takes_over_the_port_with_reuse_port(cluster):
    with backend() as url:
        _take_over(cluster, url)


def _take_over(cluster, url: str) -> None:
    cfg = edge_cfg(upstream_url=url)
    address = f"127.0.0.1:{closed_port()}"
    cfg["edge"]["listeners"][0].update(address=address, reuse_port=True)
    cfg["drain"] = DRAIN
    first = cluster.gatewatch("first", cfg)
    with Load(address) as load:
        load.wait_for(100)
        second = cluster.gatewatch("second", cfg)  # binds the same port beside the first
        assert second.listener("public") == address
        watch = ReadyWatch(first.admin)
        assert first.stop() == 0  # SIGTERM: readiness, then the listener closes, in-flight requests finish
        served = load.ok
        load.wait_for(served + 100)  # ...and the second process has all the traffic
    assert load.failures == [], load.failures[:10]
    assert load.ok >= served + 100
    assert_ready_then_draining(watch.join())
    with urllib.request.urlopen(f"http://{second.admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'gatewatch_drain_steps_total{step="started"} 0.0' in text  # the second one never drained


def test_a_roll_refuses_what_would_not_share_the_old_workers_ports():
    from gatewatch.app.supervisor import roll_blockers
    from gatewatch.config import parse_config

    base = edge_cfg(upstream_url="http://127.0.0.1:9")
    base.update(workers=2)
    more = json.loads(json.dumps(base))
    more["workers"] = 3
    moved = json.loads(json.dumps(base))
    moved["edge"]["listeners"][0]["address"] = "127.0.0.1:8080"
    drained = json.loads(json.dumps(base))
    drained["drain"] = {"grace_s": 60}  # anything a worker reads itself is fine
    old = parse_config(base)
    assert roll_blockers(old, parse_config(drained)) == []
    assert roll_blockers(old, parse_config(more)) == [
        "workers: 2 -> 3; changing the number of workers takes a full restart of the supervisor"]
    assert roll_blockers(old, parse_config(moved)) == [
        ("edge.listeners: names or addresses changed; the new workers would not share the old ones' ports: this "
         "takes a full restart of the supervisor")]

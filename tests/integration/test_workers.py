"""`workers: N`: N processes share one listener port; each has its own admin, metrics and telemetry identity."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import psutil

from tests.integration.test_two_tier import edge_cfg


def count(admin: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_server_request_duration_seconds_count{"))


def test_two_workers_share_the_port_and_both_serve(cluster):
    b = cluster.backend("inst-a")
    cfg = edge_cfg(backends=[b])
    cfg["workers"] = 2
    edge = cluster.gatewatch("edge", cfg)
    workers = edge.info["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert len({w["admin"] for w in workers}) == 2
    for i in range(200):  # a new connection each time: SO_REUSEPORT spreads connections over the workers
        with urllib.request.urlopen(f"http://{edge.listener('public')}/api/orders/{i}", timeout=5) as r:
            assert json.loads(r.read())["instance"] == "inst-a"
    counts = [count(w["admin"]) for w in workers]
    assert sum(counts) == 200
    assert all(c > 20 for c in counts), counts
    pids = [w["pid"] for w in workers]
    assert edge.stop() == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_a_dead_worker_is_replaced_and_traffic_continues(cluster):
    import signal
    import time

    b = cluster.backend("inst-a")
    cfg = edge_cfg(backends=[b])
    cfg["workers"] = 2
    edge = cluster.gatewatch("edge", cfg)
    victim = edge.info["workers"][0]["pid"]
    psutil.Process(victim).send_signal(signal.SIGKILL)
    # Connections already queued on the dead worker's socket are reset by the kernel (SO_REUSEPORT gives each
    # worker its own accept queue); once it is gone, new connections all reach the survivor.
    deadline = time.monotonic() + 5
    while psutil.pid_exists(victim) and psutil.Process(victim).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    resets = 0
    for i in range(20):  # the surviving worker keeps serving on the shared port
        for _ in range(3):  # a connection the kernel had already queued for the dead worker is reset: retry it
            try:
                with urllib.request.urlopen(f"http://{edge.listener('public')}/api/orders/{i}", timeout=5) as r:
                    assert r.status == 200
                break
            except (ConnectionResetError, urllib.error.URLError):
                resets += 1
        else:
            raise AssertionError(f"request {i} failed three times")
    assert resets <= 3, resets
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = [p for p in psutil.Process(edge.pid).children() if p.pid != victim
                and "--worker" in " ".join(p.cmdline())]
        if len(kids) == 2:
            break
        time.sleep(0.2)
    assert len(kids) == 2, "the supervisor did not replace the dead worker"
    assert edge.stop() == 0

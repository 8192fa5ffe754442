"""CPU accounting with psutil: CPU seconds of a process tree (in all, and by process name), how busy each CPU of
the machine was, each process's CPU affinity, and the CPU used by processes the harness did not start (noise:
`other_load`, `wait_quiet`).

A process of the gateway is named by the module it runs (`process_name`), anything else by its executable.
"""

from __future__ import annotations

import os
import time

from .procs import RUNNING


def cpu_seconds(procs: list) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def percpu_busy() -> list[tuple[float, float]]:
    """(busy, total) CPU seconds of every CPU of the machine since boot."""
    import psutil

    out = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        out.append((total - idle, total))
    return out


def busy_fraction(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    return [round((b1 - a1) / (bt - at), 3) if bt > at else 0.0 for (a1, at), (b1, bt) in zip(a, b)]


def process_name(cmd: list[str], fallback: str) -> str:
    """A gatewatch process by the module it runs (`gatewatch` for the proxy itself, its exporter child by its
    module path), anything else by its executable."""
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd) and cmd[cmd.index("-m") + 1].startswith("gatewatch"):
        return cmd[cmd.index("-m") + 1]
    return fallback


def cpu_by_process(procs: list) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for p in procs:
        try:
            t = p.cpu_times()
            cmd = p.cmdline()
            name = process_name(cmd, p.name())
            out[name] = out.get(name, 0.0) + t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def proc_affinities(procs: list) -> list[dict]:
    import psutil

    out = []
    for p in procs:
        try:
            cmd = p.cmdline()
            name = process_name(cmd, p.name())
            out.append({"pid": p.pid, "name": name, "cpus": sorted(p.cpu_affinity())})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def our_pids() -> set[int]:
    """The harness and every process it started that is still running."""
    pids = {os.getpid()}
    for p in list(RUNNING):
        pids.update(q.pid for q in p.tree())
    return pids


def other_cpu_snapshot(ours: set[int]) -> dict[tuple[int, float], float]:
    """CPU seconds of every user-space process that is not ours (not the harness, nor anything it started)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "ppid", "create_time", "cpu_times"]):
        i = p.info
        if i["pid"] in ours or i["pid"] == 2 or i["ppid"] == 2 or i["cpu_times"] is None:  # 2 = kthreadd
            continue
        out[(i["pid"], i["create_time"])] = i["cpu_times"].user + i["cpu_times"].system
    return out


def other_cpu_seconds(a: dict, b: dict) -> float:
    return sum(v - a.get(k, 0.0) for k, v in b.items() if v >= a.get(k, 0.0))


def other_load(seconds: float = 1.0) -> float:
    """Cores' worth of CPU used by processes that are not ours over `seconds`."""
    a = other_cpu_snapshot(our_pids())
    time.sleep(seconds)
    return other_cpu_seconds(a, other_cpu_snapshot(our_pids())) / seconds


def wait_quiet(limit_s: float) -> float | None:
    """With --wait-quiet S: wait up to S seconds until other processes use < 5 % of a core."""
    if not limit_s:
        return None
    deadline = time.monotonic() + limit_s
    load = other_load(1.0)
    while load >= 0.05 and time.monotonic() < deadline:
        load = other_load(1.0)
    return round(load, 3)

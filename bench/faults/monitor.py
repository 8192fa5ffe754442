"""What the soak samples while traffic flows, once a second, in a thread: every worker's /metrics, the RSS of
every gatewatch process, and the sink's counts, and the machine's CPU time (busy, total).

`scrapes[(index, start_time)]` is the time series of one worker *incarnation* (a restarted worker has a new
`process_start_time_seconds`, so its counters start again under a new key); `rss[pid]` tracks each gatewatch
process (supervisor, workers, exporter children) from its first sample; `sink` is the series of the sink's
totals (spans, logs) over all its incarnations; `cpu_series` the machine's CPU seconds. `at(series, t)` reads a series as of a time.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from dataclasses import dataclass, field

from .gateway import Gateway, scrape
from .peers import Sink


@dataclass
class Rss:
    role: str
    first_t: float
    created: float  # wall clock (psutil create_time), to match a worker with its /metrics incarnation
    parent: int | None  # an exporter's worker
    samples: list[tuple[float, int]] = field(default_factory=list)
    cpu_s: float = 0.0  # user + system at its last sample


class Monitor(threading.Thread):
    def __init__(self, gw: Gateway, sink: Sink, interval_s: float = 1.0):
        super().__init__(name="soak-monitor", daemon=True)
        self.gw = gw
        self.sink = sink
        self.interval_s = interval_s
        self.scrapes: dict[tuple[int, float], list[tuple[float, dict]]] = {}
        self.rss: dict[int, Rss] = {}
        self.sink_series: list[tuple[float, tuple[int, int]]] = []
        self.cpu_series: list[tuple[float, tuple[float, float]]] = []  # (busy, total) CPU seconds, whole machine
        self.failed_scrapes: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.monotonic()
            self.sample()
            self.halt.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def sample(self) -> None:
        for i in range(len(self.gw.admins)):
            self.scrape_worker(i)
        self.sample_rss()
        import psutil

        t = time.monotonic()
        totals = self.sink.totals()
        c = psutil.cpu_times()
        with self.lock:
            self.sink_series.append((t, totals))
            self.cpu_series.append((t, (sum(c) - c.idle - getattr(c, "iowait", 0), sum(c))))

    def scrape_worker(self, i: int, timeout_s: float = 2.0) -> dict | None:
        m = scrape(self.gw.admins[i], timeout_s)
        with self.lock:
            if m is None:
                self.failed_scrapes.append((time.monotonic(), i))
                return None
            self.scrapes.setdefault((i, m["start_time"]), []).append((m["time"], m))
        return m

    def sample_rss(self) -> None:
        import psutil

        t = time.monotonic()
        for pid, (role, p) in self.gw.processes().items():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: no memory to speak of
                    continue
                rss = p.memory_info().rss
                if not rss:  # exiting: its memory is already gone
                    continue
                cpu = p.cpu_times()
                created, parent = p.create_time(), p.ppid()
            except psutil.Error:
                continue
            with self.lock:
                r = self.rss.setdefault(pid, Rss(role, t, created, parent))
                r.samples.append((t, rss))
                r.cpu_s = cpu.user + cpu.system

    def stop(self) -> None:
        self.halt.set()
        self.join(10)

    def latest(self) -> dict[tuple[int, float], dict]:
        """The last scrape of every worker incarnation."""
        with self.lock:
            return {k: v[-1][1] for k, v in self.scrapes.items() if v}


def at(series: list[tuple[float, object]], t: float):
    """The last value of a time-sorted series at or before t (None before its first sample)."""
    i = bisect_right([s[0] for s in series], t)
    return series[i - 1][1] if i else None


def ready_times(scrapes: dict[tuple[int, float], list], rss: dict[int, Rss]) -> dict[int, float]:
    """pid -> when that process was serving: a worker's first answered scrape (its incarnation's
    process_start_time_seconds is its create time), and its exporter's the same as its worker's."""
    first = {k: v[0][0] for k, v in scrapes.items() if v}
    out: dict[int, float] = {}
    for pid, r in rss.items():
        if r.role.startswith("worker"):
            match = [t for (i, start), t in first.items() if abs(start - r.created) < 0.05]
            if match:
                out[pid] = match[0]
    for pid, r in rss.items():
        if r.role.startswith("exporter") and r.parent in out:
            out[pid] = out[r.parent]
    return out

"""`Bench`: one benchmark run. It starts the long-lived helpers (the nginx backend, and the OTLP sink when a case
exports telemetry), writes the run's TLS certificate when a TLS case is selected, builds the compiled floor when
its case is selected (compiled.py), runs every selected case once per
round — in order, every second round in reverse, so slow drift of the machine hits all cases alike — keeps going
when a case fails, and returns the results document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

from .cases import Case
from .common import log
from .compiled import build_floor
from .context import Context
from .gateway import Gateway
from .host import machine, tree_state
from .measure import measure
from .peers import Backend
from .render import summary_line
from .results import results
from .sink import Sink
from .tls import make_tls_files


class Bench:
    def __init__(self, args: argparse.Namespace, tools: dict[str, str], workdir: Path, cpus: list[int]):
        self.ctx = Context(args, tools, workdir, cpus)
        self.backend = Backend(self.ctx)
        self.sink = Sink(self.ctx)
        self.gateway = Gateway(self.ctx, self.backend, self.sink)

    def run(self, cases: list[Case]) -> dict[str, Any]:
        args = self.ctx.args
        started = dt.datetime.now(dt.timezone.utc)
        tree0 = tree_state()
        mach = machine(self.ctx.tools)
        mach["cpus_usable"] = self.ctx.cpus
        need_ports = max([c.pool for c in cases if c.kind in ("gatewatch", "haproxy")] + [1])
        if args.pool_addressing != "ports":
            need_ports = 1
        self.backend.start(need_ports)
        if any(c.tls != "off" for c in cases):
            self.ctx.tls = make_tls_files(self.ctx.workdir / "tls")
        if any(c.kind == "gatewatch" or (c.kind == "caddy" and c.telemetry != "off") for c in cases):
            self.sink.start()
            self.ctx.otlp_endpoint = self.sink.endpoint
        if any(c.kind == "floor" and c.build == "compiled" for c in cases):
            self.ctx.floor_compiled = build_floor(self.ctx.workdir)
            if self.ctx.floor_compiled.error:
                log(f"bench: python-floor-compiled will be skipped: {self.ctx.floor_compiled.error}")
                self.ctx.notes.append(f"python-floor-compiled skipped: {self.ctx.floor_compiled.error}")
        raw: dict[str, list[dict]] = {c.name: [] for c in cases}
        t_start = time.monotonic()
        for rnd in range(args.rounds):
            order = cases if rnd % 2 == 0 else list(reversed(cases))  # interleaved, alternating direction
            for case in order:
                raw[case.name].append(self.measure_logged(case, rnd))
        elapsed = time.monotonic() - t_start
        tree1 = tree_state()
        self.note_source_changes(tree0, tree1)
        return results(self, cases, raw, mach, tree0, tree1, started, elapsed)

    def measure_logged(self, case: Case, rnd: int) -> dict[str, Any]:
        """One measurement, its one-line summary logged; a failure becomes a record (Ctrl-C is not an Exception,
        so it still stops the run), and a dead backend ends the run."""
        t0 = time.monotonic()
        try:
            res = measure(self, case, rnd)
        except Exception as err:  # one broken case must not lose the others
            msg = f"{type(err).__name__}: {err}"
            res = {"round": rnd, "failed": msg, "problems": [f"FAILED: {msg[:500]}"]}
        log(f"bench: round {rnd + 1}/{self.ctx.args.rounds} {case.name:<32} {summary_line(res)} "
            f"({time.monotonic() - t0:.0f}s)")
        if not self.backend.proc.alive():
            raise RuntimeError(f"the nginx backend died:\n{self.backend.proc.log_text()[-2000:]}")
        return res

    def note_source_changes(self, tree0: dict, tree1: dict) -> None:
        hashes = self.gateway.source_hashes
        if tree0["source_hash"] != tree1["source_hash"] or len(hashes) > 1:
            self.ctx.notes.append(f"the gateway's Python sources changed on disk during the run (hash at start "
                                  f"{tree0['source_hash']}, at end {tree1['source_hash']}, {len(hashes)} "
                                  f"version(s) seen when gatewatch processes started): someone edited gatewatch/, "
                                  f"edge/, balancer/ or telemetry/ meanwhile, so cases may have run different code")

"""`Sink`: bench/otlp_sink.py, the OTLP/HTTP receiver the telemetry cases export to, on the load CPU for the
whole run. It writes its decoded counts (spans, logs, by span kind and event name) to a status file, which
`status` reads and `quiet` reads once the counts stop moving.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .common import BENCH, REPO, log
from .context import Context
from .procs import Proc


class Sink:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.proc: Proc | None = None  # None: no case of this run exports telemetry
        self.status_file = ctx.workdir / "otlp_sink.status.json"
        self.endpoint: str | None = None

    def start(self) -> None:
        ctx = self.ctx
        argv = ctx.taskset(ctx.load_cpu) + [sys.executable, str(BENCH / "otlp_sink.py"), "--status-file",
                                            str(self.status_file)]
        if ctx.args.sink_flatten:
            argv.append("--flatten")
        self.proc = Proc("otlp-sink", argv, ctx.workdir, env=ctx.child_env(), cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.status_file.exists():
                self.endpoint = json.loads(self.status_file.read_text())["http_endpoint"]
                log(f"bench: OTLP sink {self.endpoint} (pid {self.proc.pid})")
                return
            if not self.proc.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"OTLP sink did not start; log:\n{self.proc.log_text()[-2000:]}")

    def tree(self) -> list:
        return self.proc.tree() if self.proc else []

    def quiet(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The sink's counts once they stop moving (a stopped gateway's last flush may still be in flight)."""
        if not self.proc:
            return None
        deadline = time.monotonic() + timeout_s
        last = self.status()
        while time.monotonic() < deadline:
            time.sleep(0.4)
            cur = self.status()
            if (cur.get("spans"), cur.get("logs")) == (last.get("spans"), last.get("logs")):
                return cur
            last = cur
        return last

    def status(self) -> dict[str, Any]:
        for _ in range(20):
            try:
                return json.loads(self.status_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.01)
        return {"spans": 0, "logs": 0}

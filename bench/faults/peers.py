"""The soak's peers that it breaks on purpose: the OTLP sink, the JWKS endpoint and the backend instances.

Each keeps its port across incarnations (gatewatch's config names them), runs as its own process group
(`harness.procs.Proc`) and has the faults the schedule injects: `hang()` (SIGSTOP), `resume()` (SIGCONT),
`kill()` (SIGKILL) and `start()` (a new incarnation on the same port). The sink writes one status file per
incarnation (`sink-N.json`); `Sink.totals()` adds them up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from harness.procs import Proc


def wait_port(port: int, proc: Proc, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if not proc.alive():
                break
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}:\n{proc.log_text()[-2000:]}")


class Peer:
    """One restartable process on a fixed port."""

    def __init__(self, name: str, port: int, workdir: Path, env: dict[str, str]):
        self.name = name
        self.port = port
        self.workdir = workdir
        self.env = env
        self.proc: Proc | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc(f"{self.name}-{self.starts}", self.argv(), self.workdir, env=self.env)
        wait_port(self.port, self.proc, self.name)

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.alive():
            os.kill(self.proc.pid, sig)

    def hang(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc:
            self.signal(signal.SIGKILL)
            self.proc.popen.wait(5)
            self.proc.stop(1)  # closes its log, forgets it
            self.proc = None

    def stop(self) -> None:
        if self.proc:
            self.resume()  # a stopped process would ignore SIGTERM until killed
            self.proc.stop(5)
            self.proc = None


class Backend(Peer):
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "faults.backend", "--port", str(self.port), "--id", self.name]


class Jwks(Peer):
    def __init__(self, port: int, workdir: Path, env: dict[str, str], jwks_file: Path):
        super().__init__("jwks", port, workdir, env)
        self.jwks_file = jwks_file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "faults.jwks", "--port", str(self.port), "--jwks-file", str(self.jwks_file)]

    def fetch_times(self) -> list[float]:
        """CLOCK_MONOTONIC times of every fetch served, from the logs of every incarnation."""
        out = []
        for f in sorted(self.workdir.glob("jwks-*.log")):
            for line in f.read_text(errors="replace").splitlines():
                if line.startswith("jwks: fetch"):
                    out.append(float(line.rsplit(" ", 1)[1]))
        return out


class Sink(Peer):
    def __init__(self, port: int, workdir: Path, env: dict[str, str]):
        super().__init__("sink", port, workdir, env)

    def status_file(self, n: int) -> Path:
        return self.workdir / f"sink-{n}.json"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "faults.sink", "--port", str(self.port), "--status-file",
                str(self.status_file(self.starts))]

    def by_process(self) -> dict[str, dict]:
        """Every incarnation's counts added up, per gatewatch process ("worker|service.instance.id")."""
        out: dict[str, dict] = {}
        for n in range(1, self.starts + 1):
            doc = _read_json(self.status_file(n))
            for key, c in (doc or {}).get("by_process", {}).items():
                e = out.setdefault(key, {"spans": 0, "logs": 0, "kinds": {}, "events": {},
                                         "first_seen": c["first_seen"]})
                e["spans"] += c["spans"]
                e["logs"] += c["logs"]
                e["first_seen"] = min(e["first_seen"], c["first_seen"])
                for k in ("kinds", "events"):
                    for name, v in c[k].items():
                        e[k][name] = e[k].get(name, 0) + v
        return out

    def totals(self) -> tuple[int, int]:
        procs = self.by_process().values()
        return sum(p["spans"] for p in procs), sum(p["logs"] for p in procs)


def _read_json(path: Path) -> dict | None:
    for _ in range(20):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.01)
    return None

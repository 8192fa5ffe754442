"""Start real `gatewatch` processes (the CLI, as users run it) for integration tests, and always stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


class Proc:
    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.ready_file = workdir / f"{name}.ready.json"
        self.ready_file.unlink(missing_ok=True)  # a restarted process must announce itself again
        self.log_path = workdir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        full_env.pop("OTEL_EXPORTER_OTLP_PROTOCOL", None)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv + ["--ready-file", str(self.ready_file)], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=full_env, cwd=workdir, start_new_session=True)
        self.info: dict = {}

    def wait_ready(self, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return self.info
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready (exit {self.popen.poll()}):\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def listener(self, name: str) -> str:
        return self.info["listeners"][name]

    @property
    def admin(self) -> str:
        return self.info["admin"]

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gatewatch", *args]


class Cluster:
    """Collects processes started by a test; `stop_all()` stops them in reverse order."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.env = env or {}
        self.procs: list[Proc] = []

    def backend(self, instance_id: str, zone: str = "z1", delay_ms: float = 0, listen: str = "127.0.0.1:0",
                request_log: Path | None = None) -> Proc:
        extra = ["--request-log", str(request_log)] if request_log else []
        p = Proc(f"backend-{instance_id}", cli("backend", "--id", instance_id, "--zone", zone, "--delay-ms",
                                                str(delay_ms), "--listen", listen, *extra), self.workdir, self.env)
        self.procs.append(p)
        p.wait_ready()
        return p

    def gatewatch(self, name: str, config: dict, env: dict[str, str] | None = None) -> Proc:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        p = Proc(name, cli("run", "-c", str(path)), self.workdir, {**self.env, **(env or {})})
        self.procs.append(p)
        p.wait_ready()
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])

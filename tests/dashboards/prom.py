"""A real Prometheus (Debian's /usr/bin/prometheus) for tests: started on a free loopback port with exemplar
storage on, scraping given targets every second and evaluating given rule files every second; and a small
client for its HTTP API (`/api/v1/query`, `query_range`, `query_exemplars`, `label/.../values`, `rules`,
`alerts`) that returns parsed JSON and never raises on a PromQL error (the error is data for the test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required under CI (Debian package `prometheus`; scripts/test.sh installs it)")
    pytest.skip(f"{name} not installed (apt-get install prometheus; scripts/test.sh does it as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Answer:
    ok: bool
    data: object
    error: str = ""


def _answer(req: urllib.request.Request | str) -> Answer:
    """One Prometheus HTTP API call: the data on success, else the API's own error (also on an HTTP error)."""
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as err:
        doc = json.loads(err.read() or b"{}")
    if doc.get("status") != "success":
        return Answer(False, None, f"{doc.get('errorType')}: {doc.get('error')}")
    return Answer(True, doc["data"])


class Prometheus:
    def __init__(self, workdir: Path, jobs: dict[str, list[str]], rule_files: list[Path]):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--enable-feature=exemplar-storage",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready (exit {self.popen.poll()}):\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()

    # --- HTTP API -------------------------------------------------------------------------------------------

    def api(self, path: str, **params) -> Answer:
        body = urllib.parse.urlencode(params, doseq=True).encode()
        return _answer(urllib.request.Request(f"{self.url}/api/v1/{path}", data=body, method="POST",
                                              headers={"Content-Type": "application/x-www-form-urlencoded"}))

    def get(self, path: str, **params) -> Answer:
        return _answer(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}")

    def instant(self, expr: str) -> Answer:
        return self.api("query", query=expr)

    def range(self, expr: str, start: float, end: float, step: str = "2s") -> Answer:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)

    def exemplars(self, expr: str, start: float, end: float) -> Answer:
        return self.get("query_exemplars", query=expr, start=f"{start:.3f}", end=f"{end:.3f}")

    def label_values(self, label: str, selector: str, start: float, end: float) -> Answer:
        return self.get(f"label/{label}/values", **{"match[]": selector, "start": f"{start:.3f}",
                                                     "end": f"{end:.3f}"})

    def metric_names(self) -> set[str]:
        answer = self.get("label/__name__/values")
        return set(answer.data or [])

    def active_alerts(self) -> list[dict]:
        answer = self.get("alerts")
        return answer.data["alerts"] if answer.ok else []

    def rules(self) -> list[dict]:
        answer = self.get("rules")
        return [r for g in answer.data["groups"] for r in g["rules"]] if answer.ok else []

    def targets_up(self) -> dict[str, str]:
        answer = self.get("targets")
        return {t["scrapeUrl"]: t["health"] for t in answer.data["activeTargets"]} if answer.ok else {}


def has_data(answer: Answer) -> bool:
    if not answer.ok:
        return False
    data = answer.data
    if data["resultType"] in ("matrix", "vector"):
        return bool(data["result"])
    return data["result"] is not None

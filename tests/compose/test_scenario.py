"""The load generator and backend-b's stop/restart loop, run for real on loopback (short timings).

Both run in the compose stack from compose/scenario/; here they run against a local `gatewatch backend` so a
broken script fails before anyone runs `docker compose up`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.compose.stack import COMPOSE_DIR

SCENARIO = COMPOSE_DIR / "scenario"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OTEL_SDK_DISABLED="true", PYTHONUNBUFFERED="1", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `gatewatch` script
    return env


@pytest.fixture
def backend_port(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gatewatch", "backend", "--listen", f"127.0.0.1:{port}",
                             "--id", "test-backend"], env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _accepts(port), 15), "the demo backend did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_flaky_backend_stops_restarts_and_exits_on_sigterm(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(["/bin/sh", str(SCENARIO / "flaky-backend.sh"), "--listen", f"127.0.0.1:{port}",
                             "--id", "backend-b"], env=_env(FLAKY_UP_S="3", FLAKY_DOWN_S="1"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(lambda: _accepts(port), 15), "backend-b never came up"
        assert _wait_for(lambda: not _accepts(port), 6), "backend-b was never stopped"
        assert _wait_for(lambda: _accepts(port), 15), "backend-b was not restarted"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=8)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopped; restarting in 1s" in out
    assert _wait_for(lambda: not _accepts(port), 3), "the backend outlived its wrapper"


def test_loadgen_plays_a_cycle_with_bad_tokens_and_a_burst(backend_port, tmp_path):
    proc = subprocess.Popen([sys.executable, str(SCENARIO / "loadgen.py")], cwd=tmp_path,
                            env=_env(TARGET=f"http://127.0.0.1:{backend_port}", RPS="40", CYCLE_S="2",
                                     BURST_REQUESTS="25", BAD_TOKEN_SHARE="0.5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        header = proc.stdout.readline()
        cycle = proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert header.startswith("loadgen: target"), header + err
    assert cycle.startswith("loadgen cycle 1:"), cycle + err
    assert "burst: 200=25" in cycle and "ok: 200=" in cycle, cycle
    assert any(k in cycle for k in ("expired:", "bad_signature:", "malformed:", "missing:")), cycle
    assert "Warning" not in err, err

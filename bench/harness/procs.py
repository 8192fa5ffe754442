"""Child processes: `Proc` starts one in its own session (process group) with its output in a log file, tracks it
in `RUNNING` and stops its whole tree; `stop_all` stops whatever is still running (on exit, failure or Ctrl-C);
`run_capture` runs a short-lived command and returns its output; `wait_http` waits for a server to answer.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.request import OpenerDirector

from .common import HTTP, log

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _child_setup() -> None:
    """In the child before exec: die with the harness even if it is SIGKILLed (PR_SET_PDEATHSIG)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


RUNNING: list["Proc"] = []


class Proc:
    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, capture: bool = False):
        import psutil

        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self._log = None if capture else open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE if capture else self._log,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=str(cwd) if cwd else None, start_new_session=True, preexec_fn=_child_setup)
        try:
            self.ps = psutil.Process(self.popen.pid)
        except psutil.NoSuchProcess:
            self.ps = None
        self.stopped = False
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list:
        """The leader and its live descendants (psutil objects, which guard against pid reuse)."""
        import psutil

        if self.ps is None:
            return []
        try:
            return [self.ps] + self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 12.0) -> None:
        import psutil

        if self.stopped:
            return
        self.stopped = True
        tree = self.tree()
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)  # the leader is alive, so the group id is ours
            except (ProcessLookupError, PermissionError):
                pass
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for q in alive:
            try:
                q.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._log:
            self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)

    def log_text(self) -> str:
        if self._log and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def stop_all() -> None:
    for p in reversed(list(RUNNING)):
        try:
            p.stop(timeout_s=8.0)
        except Exception as err:  # keep stopping the others
            log(f"bench: could not stop {p.name}: {err}")


def run_capture(name: str, argv: list[str], workdir: Path, timeout_s: float) -> tuple[int, str, str]:
    p = Proc(name, argv, workdir, capture=True)
    try:
        out, err = p.popen.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.stop(2)
        raise RuntimeError(f"{name} did not finish within {timeout_s:.0f}s")
    finally:
        p.stopped = True
        if p in RUNNING:
            RUNNING.remove(p)
    return p.popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def wait_port(port: int, proc: Proc | None, timeout_s: float = 30.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:`port` (servers that are not HTTP/1.1: h2c, TCP)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited before listening on {port}:\n{proc.log_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s}s")


def wait_http(url: str, proc: Proc, timeout_s: float = 20.0, opener: OpenerDirector = HTTP) -> None:
    """Until `url` answers 200 "ok" (every server under test answers the backend's body); an https URL with the
    opener of tls.https_opener, which verifies the run's certificate."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); log:\n{proc.log_text()[-2000:]}")
        try:
            with opener.open(url, timeout=2) as r:
                body = r.read()
            if r.status == 200 and body == b"ok":
                return
            last = f"status {r.status} body {body[:60]!r}"
        except Exception as err:  # not up yet
            last = err
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not answer 200 'ok' at {url}: {last}; log:\n{proc.log_text()[-2000:]}")

"""A real `redis-server` for the soak's distributed rate limits, on a temp port, without persistence.

`Redis(ctx, port)`: `start()` runs it (and waits for PING), `stop()` ends it with SIGTERM (what `systemctl stop`
or a crashed node looks like to clients: connections closed, then refused), `hang()`/`resume()` freeze and thaw
it with SIGSTOP/SIGCONT (connections stay open, nothing is answered: a Redis stuck in a long command or a
stalled VM). The same port is used by every incarnation, as gatewatch's config names it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

from harness.procs import Proc


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None)


class Redis:
    def __init__(self, workdir: Path, port: int):
        self.workdir = workdir
        self.port = port
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc(f"redis-{self.starts}", [
            redis_binary() or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"],
            self.workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}:\n{self.proc.log_text()[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(5)
            self.proc = None

    def hang(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGCONT)

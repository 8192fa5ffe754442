"""The machine the harness runs on: the open-files limit, free ports, and the description recorded in the JSON
(`machine`: CPU, kernel, versions; `tree_state`: the git commit, uncommitted files outside bench/ and
`source_hash`, a hash of the gateway's sources as they are on disk).
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import resource
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import REPO
from .tools import version


def raise_nofile() -> tuple[int, int]:
    """The open-files limit raised to the hard limit (children inherit it); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_range(n: int) -> list[int]:
    """n consecutive free ports below the ephemeral range (so wrk's own client ports never collide)."""
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    rng = random.Random()
    candidates = list(range(10000, max(10001, lo - n - 1), 500))
    rng.shuffle(candidates)
    for base in candidates:
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no range of {n} free ports found")


def tree_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    # Porcelain lines are "XY path": the leading space of an unstaged change is part of the format, so the
    # output is split into lines before anything is stripped.
    status = [ln for ln in git("status", "--porcelain").splitlines() if ln[3:].split("/")[0] != "bench"]
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty_outside_bench": status, "source_hash": source_hash()}


def source_hash() -> str:
    """Hash of the gateway's Python sources as they are on disk now (another engineer edits them meanwhile)."""
    h = hashlib.sha256()
    for d in ("gatewatch", "edge", "balancer", "telemetry"):
        for f in sorted((REPO / d).rglob("*.py")):
            try:
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
            except OSError:
                pass
    return h.hexdigest()[:16]


def machine(tools: dict[str, str]) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model, "cpu_count": os.cpu_count(), "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(), "os": platform.platform(), "python": sys.version.split()[0],
        "haproxy": version([tools["haproxy"], "-v"]), "nginx": version([tools["nginx"], "-v"]),
        "wrk": version([tools["wrk"], "-v"]), "hostname": socket.gethostname(),
        "caddy": "Caddy " + version([tools["caddy"], "version"]).split()[0] if tools.get("caddy") else None,
        "gatewatch_build": gatewatch_build(),
        "loadavg_at_start": os.getloadavg(),
    }


def gatewatch_build() -> dict[str, Any]:
    """What the tree's build provides (gatewatch/build_mode.py, as `python -c` from this tree sees it): whether
    every hot module is compiled and current. Each gatewatch process's own mode is read from its ready file."""
    import json
    import subprocess

    from .common import child_env

    code = "import json, gatewatch.build_mode as b; print(json.dumps(b.state().as_dict()))"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                           env=child_env(), check=False)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as err:
        return {"compiled": None, "mode": f"unknown ({type(err).__name__}: {err})"}

"""The load generator: `run_wrk` runs `wrk -t1 -cN -dS` on the load CPU with bench/wrk_done.lua, whose `done`
hook prints one `WRKJSON {...}` line (counts, errors and latency percentiles in µs) that `read_wrk` parses.

With `close`, every request carries `Connection: close`: the server answers with `Connection: close` and closes,
and wrk opens a new connection (TCP and, over https, TLS) for the next request. wrk's latency is timed from the
request's first byte, so it never includes the connect or the handshake; the rate does.
"""

from __future__ import annotations

import json
from typing import Any

from .common import LUA
from .context import Context
from .procs import run_capture


def run_wrk(ctx: Context, url: str, conns: int, duration_s: int, label: str, close: bool = False) -> dict[str, Any]:
    argv = ctx.taskset(ctx.load_cpu) + [ctx.tools["wrk"], "-t1", f"-c{conns}", f"-d{duration_s}s",
                                        *(["-H", "Connection: close"] if close else []), "-s", str(LUA), url]
    rc, out, err = run_capture(ctx.next_name(f"wrk-{label}"), argv, ctx.workdir, duration_s + 60)
    if rc != 0:
        raise RuntimeError(f"wrk exited {rc}: {err.strip()[-1000:]}")
    return read_wrk(out)


def read_wrk(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk printed no WRKJSON line; its output was:\n{stdout[-2000:]}")

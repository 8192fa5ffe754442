"""What every part of the harness shares: where things are, the request path, the loopback HTTP client, the
log line, the noise thresholds and the median.

`BENCH` is the bench/ directory and `REPO` the repository root: the gateway is always run from this tree.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
LUA = BENCH / "wrk_done.lua"
PATH = "/bench/items/42"  # the request path of every throughput case (direct, references and gatewatch)
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

NOISY = 0.10  # other processes' CPU (in cores) during a run above which the row is flagged
LOAD_SATURATED = 0.97  # busy fraction of the load generator's CPU above which a proxy row is flagged

# Never through an HTTP proxy from the environment: everything here is on the loopback.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Interrupted(BaseException):
    """SIGINT/SIGTERM while a run is under way: raised from the handler so that cleanup (stopping every process
    the run started) happens in the finally blocks."""


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)

"""What every part of the harness shares: where things are, the request path, the loopback HTTP client, the
log line, the noise thresholds, the median, a Python child's environment, and what every bench script does around
its run (`pin_harness`, `run_main`: signals, exit codes, stopping every process, the work directory).

`BENCH` is the bench/ directory and `REPO` the repository root: the gateway is always run from this tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Callable

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


PURE_ENV = "GATEWATCH_PURE_PYTHON"  # gatewatch/build_mode.py: set, the hot modules run from their .py


def child_env(*paths: Path, pure: bool = False) -> dict[str, str]:
    """The environment of a Python child: none of the harness's OTEL_ settings, and this tree's modules (then
    `paths`) first on PYTHONPATH, so `python -m gatewatch` runs the gateway of the tree the harness lives in.
    `pure`: GATEWATCH_PURE_PYTHON=1 (gatewatch runs every hot module from its .py); otherwise it is removed, so
    a value in the harness's own environment cannot turn a compiled case pure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != PURE_ENV}
    if pure:
        env[PURE_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pin_harness() -> list[int]:
    """The usable CPUs; the harness moves itself to the second (the load CPU), off the proxy's core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[1]})
    else:
        log("bench: only one CPU is usable: running UNPINNED (the proxy, wrk and the backend share it)")
    return cpus


def run_main(tag: str, workdir: Path, body: Callable[[], int], *, keep_tmp: bool, failure_code: int = 1) -> int:
    """Runs a bench script's `body` and returns its exit code, doing what every script does around it:
    Ctrl-C (even in the background), SIGTERM and SIGHUP stop the run with exit code 130; a RuntimeError or
    OSError (something could not start or run) is logged on one line, with exit code `failure_code`; every
    process the harness started is stopped in any case. The work directory is removed unless `keep_tmp`, or
    the run did not complete (failed or interrupted), so that its configs and logs are there to read."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = failure_code
    try:
        code = body()
    except (KeyboardInterrupt, Interrupted) as err:
        log(f"{tag}: interrupted ({str(err) or 'SIGINT'}); stopping everything")
        code = 130
    except (RuntimeError, OSError) as err:
        log(f"{tag}: failed: {err}")
        code = failure_code
    finally:
        from .procs import stop_all  # procs imports this module

        stop_all()
        if keep_tmp or code >= failure_code:
            log(f"{tag}: configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code

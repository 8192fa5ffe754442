"""Gatewatch: an observability-first API gateway and load balancer.

One import name for the whole product. The layers the design card names keep their directories at the top of
the repository and are installed under this package (pyproject.toml maps them):

    gatewatch.edge        edge/        the gateway's decisions: routing, request-target rules, route policies
    gatewatch.balancer    balancer/    pools, algorithms, health, outlier ejection, failover, retries
    gatewatch.telemetry   telemetry/   names, records, the recorder, the exporter process, OTLP encoding
    gatewatch.dashboards  dashboards/  Grafana dashboards and alert rules generated from the names

and the rest lives in this directory:

    gatewatch.proxy       the proxy core both tiers run: the engine and its phases, the snapshot, the
                          recording step, header rules, request keys
    gatewatch.io          the I/O ends behind the Listener and Forwarder protocols: the fast data plane
                          (raw asyncio + llhttp), the aiohttp reference pair, and an in-memory pair
    gatewatch.app         the process shell: command line, runtime wiring, supervisor, admin API
    gatewatch.demo        `gatewatch demo` and its demo backends
    gatewatch.config      the root of the configuration file
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version
from pathlib import Path as _Path

try:
    __version__ = _version("gatewatch")  # pyproject.toml's, the one source of the version
except _NotInstalled:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

# Run straight from a source checkout (the checkout's directory first on sys.path, as `python -m pytest` or
# `python -m gatewatch` there put it), this directory is the package but its layers sit beside it: look for
# subpackages there too, as the installed distribution has them here. Nothing changes for an installed copy.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "edge" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - a package's own __path__

# The hot modules may be compiled (setup.py); a compiled one runs only while its .py is the source it was
# compiled from, and never under GATEWATCH_PURE_PYTHON=1 (build_mode.py, docs/compiled.md).
from gatewatch import build_mode as _build_mode  # noqa: E402 - after __path__ is complete

_build_mode.install()

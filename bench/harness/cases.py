"""The cases: `Case` says what runs (its kind: direct | haproxy | nginx | floor | gatewatch | idle) and how
(connections, telemetry, routes, pool, algorithm, workers, pinning); `ALL_CASES` is the list in run order and
`select_cases` turns --cases into a subset of it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .common import log


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # direct | haproxy | nginx | floor | gatewatch | idle
    conns: int = 32
    telemetry: str = "off"  # off | full | sampled (gatewatch only)
    routes: int = 1
    pool: int = 1
    algorithm: str = "round_robin"
    workers: int = 1  # gatewatch `workers: N`
    pinned: bool = True  # False: the proxy may run on every CPU (multi-core cases)


ALL_CASES = [
    Case("direct", "direct"),
    Case("haproxy", "haproxy"),
    Case("nginx", "nginx"),
    Case("python-floor", "floor"),
    Case("gatewatch-off", "gatewatch", telemetry="off"),
    Case("gatewatch-full", "gatewatch", telemetry="full"),
    Case("gatewatch-sampled", "gatewatch", telemetry="sampled"),
    Case("latency-1conn-direct", "direct", conns=1),
    Case("latency-1conn-full", "gatewatch", conns=1, telemetry="full"),
    Case("routes-10", "gatewatch", routes=10),
    Case("routes-1000", "gatewatch", routes=1000),
    Case("pool-3-round_robin", "gatewatch", pool=3, algorithm="round_robin"),
    Case("pool-1000-round_robin", "gatewatch", pool=1000, algorithm="round_robin"),
    Case("pool-3-weighted_round_robin", "gatewatch", pool=3, algorithm="weighted_round_robin"),
    Case("pool-1000-weighted_round_robin", "gatewatch", pool=1000, algorithm="weighted_round_robin"),
    # the reference on the same pools: what 1,000 distinct upstream addresses cost a proxy that is not Python
    Case("pool-3-haproxy", "haproxy", pool=3),
    Case("pool-1000-haproxy", "haproxy", pool=1000),
    # Multi-core (`workers: N`): the gateway may use both CPUs; wrk and the backend stay on the load CPU, so a
    # second worker can only add what the load CPU has left. Both cases unpinned, so the ratio is like for like.
    Case("workers-1", "gatewatch", workers=1, pinned=False),
    Case("workers-2", "gatewatch", workers=2, pinned=False),
    Case("idle-10k", "idle"),
]
CASE_NAMES = [c.name for c in ALL_CASES]


def _group(name: str) -> str | None:
    for g in ("pool", "routes", "latency", "workers"):
        if name.startswith(g):
            return g
    return None


def select_cases(wanted: list[str] | None) -> list[Case]:
    """Exact names, prefixes (`gatewatch`), or one member of a compared pair/group (`pool-1000` runs every pool
    case, `routes-1000` both route cases, `latency-1conn` both latency cases): a ratio needs both sides."""
    if not wanted:
        return list(ALL_CASES)
    chosen: set[str] = set()
    unknown = []
    for w in wanted:
        hits = [c.name for c in ALL_CASES if c.name == w or c.name.startswith(w + "-")
                or (_group(w) is not None and _group(c.name) == _group(w))]
        if not hits:
            unknown.append(w)
        chosen.update(hits)
    if unknown:
        log(f"bench: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASE_NAMES)}")
        sys.exit(2)
    return [c for c in ALL_CASES if c.name in chosen]

"""The proxy under test of one measurement: `Target` (its URL, its processes, whose CPU counts as its own, for
gatewatch its admin addresses and ready-file info, and for a TLS case how to read its count of TLS handshakes);
`start_target` starts the one a case names, `stop_target` stops it and reports crashes and warning/error lines of
its log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cases import Case
from .common import PATH
from .peers import STARTERS, haproxy_stats_sock
from .procs import Proc
from .tls import haproxy_handshakes

if TYPE_CHECKING:
    from .bench import Bench


@dataclass
class Target:
    url: str
    procs: list[Proc] = field(default_factory=list)  # what to stop afterwards (the proxy under test)
    cpu_procs: Any = None  # callable → psutil processes whose CPU counts as the proxy's
    admin: list[str] | None = None  # every worker's admin address
    info: dict = field(default_factory=dict)
    handshakes: Any = None  # TLS cases: callable → TLS handshakes the proxy completed since it started


def start_target(bench: Bench, case: Case, rnd: int) -> Target:
    backend = bench.backend
    if case.kind == "direct":
        return Target(url=f"http://127.0.0.1:{backend.ports[0]}{PATH}", cpu_procs=backend.proc.tree)
    if case.kind in STARTERS:
        url, p = STARTERS[case.kind](bench.ctx, backend, case, rnd)
        t = Target(url=url, procs=[p], cpu_procs=p.tree)
        if case.kind == "haproxy" and case.tls != "off":
            sock = haproxy_stats_sock(bench.ctx, rnd)
            t.handshakes = lambda: haproxy_handshakes(sock)
        return t
    return bench.gateway.start(case, rnd)


_BAD_LOG_LINE = (" ERROR ", " CRITICAL ", "Traceback", "[ALERT]", "[emerg]", "[alert]", "[crit]", " WARNING ",
                 "[WARNING]", "[error]", '"level":"error"', '"level":"warn"')  # the last two: Caddy's JSON log
# Caddy's warnings that the reference's config asks for (admin off, plaintext only) and its exit on SIGTERM
_EXPECTED_LINES = ('"admin endpoint disabled"', '"HTTP/2 skipped because it requires TLS"',
                   '"HTTP/3 skipped because it requires TLS"', '"msg":"exiting; byeee!!')


def stop_target(t: Target) -> list[str]:
    problems = []
    for p in t.procs:
        crashed = not p.alive()
        p.stop()
        text = p.log_text()
        if crashed:
            problems.append(f"{p.name} had exited during the case (exit {p.popen.returncode})")
        bad = [ln for ln in text.splitlines() if any(k in ln for k in _BAD_LOG_LINE)
               and not any(k in ln for k in _EXPECTED_LINES)]
        if bad:
            uniq = list(dict.fromkeys(ln.split(": ", 1)[-1][:200] for ln in bad))
            problems.append(f"{p.name}: {len(bad)} warning/error log lines, e.g. {uniq[:3]}")
    return problems

"""The soak's schedule: which fault is injected when, and what is undone, as data.

A `Phase` has a name, what is injected (for the table), a share of the run's duration (with a floor, so that
`--quick` still outlasts health checks and export timeouts) and `actions`: (offset as a fraction of the phase,
action name) pairs that the Soak runs in order. Requests are counted in the phase in which they *started*.
Undoing a fault is the first action of the next phase, so each fault's recovery has a phase (and a row) of
its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Phase:
    name: str
    injected: str
    share: float  # of --duration
    min_s: float  # floor, for --quick
    actions: tuple[tuple[float, str], ...] = field(default=())


PHASES: tuple[Phase, ...] = (
    Phase("baseline", "nothing", 20, 5),
    Phase("collector-hang", "OTLP sink SIGSTOPped (accepts, never reads)", 20, 6, ((0, "sink_hang"),)),
    Phase("collector-killed", "OTLP sink SIGKILLed (refused)", 12, 3, ((0, "sink_kill"),)),
    Phase("collector-back", "new OTLP sink on the same port", 14, 4, ((0, "sink_start"),)),
    Phase("redis-hang", "redis-server SIGSTOPped (commands time out)", 10, 3, ((0, "redis_hang"),)),
    Phase("redis-stopped", "redis-server SIGTERMed (refused)", 12, 3, ((0, "redis_stop"),)),
    Phase("redis-back", "redis-server started again", 10, 3, ((0, "redis_start"),)),
    Phase("jwks-hang", "JWKS endpoint SIGSTOPped (refresh every 3 s)", 16, 5, ((0, "jwks_hang"),)),
    Phase("jwks-back", "JWKS endpoint SIGCONTed", 8, 2, ((0, "jwks_resume"),)),
    Phase("backend-kill-1", "instance b1 SIGKILLed", 12, 3, ((0, "kill_b1"),)),
    Phase("backend-back-1", "b1 restarted", 12, 3, ((0, "start_b1"),)),
    Phase("backend-kill-2", "b2 and b3 SIGKILLed (2 of 4)", 12, 3, ((0, "kill_b2_b3"),)),
    Phase("backend-back-2", "b2 and b3 restarted", 12, 3, ((0, "start_b2_b3"),)),
    Phase("reload", "SIGHUP to supervisor; POST /reload x2 per worker", 18, 5,
          ((0, "reload_sighup"), (1 / 3, "reload_admin"), (2 / 3, "reload_admin"))),
    Phase("worker-sigterm", "SIGTERM to worker 1 (supervisor restarts it)", 20, 6, ((0, "sigterm_worker_1"),)),
    Phase("final", "nothing (recovery)", 12, 3),
)


def durations(total_s: float) -> list[float]:
    """Each phase's length for a run of about total_s seconds (the floors win when total_s is short)."""
    whole = sum(p.share for p in PHASES)
    return [max(p.min_s, total_s * p.share / whole) for p in PHASES]

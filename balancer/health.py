"""Pure health state machines, driven by results and a clock passed in (tests use a fake clock).

- `ProbeCounter`: active health checks' rise/fall thresholds. `observe(ok)` returns True when the verdict
  flips. A flapping instance (pass, fail, pass, ...) never flips while both thresholds are above 1.
- `OutlierTracker`: passive health of one instance from real traffic: consecutive 5xx and consecutive gateway
  errors, the trace ids of the recent failures (so an ejection can point at the requests that caused it), the
  ejection deadline and the ejection count that lengthens repeated ejections.
- `Result`: how one upstream attempt ended, as outlier detection sees it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from gatewatch.balancer.config import OutlierConfig


class Result(Enum):
    SUCCESS = "success"  # any answer below 500
    SERVER_ERROR = "5xx"  # the instance answered 500-599 (not a gateway error)
    GATEWAY_ERROR = "gateway_error"  # connect failure, reset, timeout, or 502/503/504 from the instance


GATEWAY_STATUSES = frozenset({502, 503, 504})
# classify's answers as module constants: a member read through its Enum class costs ~5x a module global
SUCCESS, SERVER_ERROR, GATEWAY_ERROR = Result.SUCCESS, Result.SERVER_ERROR, Result.GATEWAY_ERROR


@dataclass(slots=True)
class ProbeCounter:
    healthy_threshold: int
    unhealthy_threshold: int
    healthy: bool = True
    passes: int = 0
    failures: int = 0

    def observe(self, ok: bool) -> bool:
        """Count one probe; True when this probe flipped the verdict."""
        if ok:
            self.passes += 1
            self.failures = 0
            if not self.healthy and self.passes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.failures += 1
            self.passes = 0
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False


@dataclass(frozen=True, slots=True)
class Ejection:
    reason: str  # telemetry.names.Reason value (outlier.consecutive_5xx | outlier.consecutive_gateway_errors)
    count: int  # this instance's ejection number (lengthens the duration)
    duration_s: float
    trace_ids: tuple[str, ...]  # the failing requests that caused it, oldest first
    last_trace_id: str | None
    last_span_id: str | None


@dataclass(slots=True)
class OutlierTracker:
    config: OutlierConfig
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejected_until: float = 0.0  # monotonic seconds; 0 = not ejected
    ejections: int = 0
    returned_at: float | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=5))  # (trace id hex, span id hex)

    def __post_init__(self):
        self.recent = deque(maxlen=self.config.trace_ids_kept)

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def observe(self, result: Result, trace_id: str | None, span_id: str | None) -> str | None:
        """Count one attempt's result; return the ejection reason when a threshold is reached."""
        c = self.config
        if result is SUCCESS:
            self.reset_run()
            return None
        if trace_id:
            self.recent.append((trace_id, span_id))
        self.consecutive_5xx += 1
        if result is GATEWAY_ERROR:
            self.consecutive_gateway += 1
        else:
            self.consecutive_gateway = 0
        if c.consecutive_gateway_errors and self.consecutive_gateway >= c.consecutive_gateway_errors:
            return "outlier.consecutive_gateway_errors"
        if c.consecutive_5xx and self.consecutive_5xx >= c.consecutive_5xx:
            return "outlier.consecutive_5xx"
        return None

    def reset_run(self) -> None:
        """Forget the current run of failures (a success, or an ejection the pool's cap refused): the next
        ejection names only the failures of its own run."""
        self.consecutive_5xx = self.consecutive_gateway = 0
        self.recent.clear()

    def eject(self, reason: str, now: float) -> Ejection:
        c = self.config
        # An instance that stayed in good standing for max_ejection_s since its last return starts over.
        if self.ejections and self.returned_at is not None and now - self.returned_at > c.max_ejection_s:
            self.ejections = 0
        self.ejections += 1
        duration = min(c.base_ejection_s * self.ejections, c.max_ejection_s)
        self.ejected_until = now + duration
        recent = tuple(self.recent)
        self.recent.clear()
        self.consecutive_5xx = self.consecutive_gateway = 0
        last = recent[-1] if recent else (None, None)
        return Ejection(reason, self.ejections, duration, tuple(t for t, _ in recent), last[0], last[1])

    def end_ejection(self, now: float) -> None:
        """The instance is known to be back (its active health check recovered): the ejection ends now."""
        self.ejected_until = 0.0
        self.returned_at = now
        self.reset_run()

    def expire(self, now: float) -> bool:
        """True when an ejection just ended (the instance returns to the pool)."""
        if self.ejected_until and self.ejected_until <= now:
            self.ejected_until = 0.0
            self.returned_at = now
            return True
        return False


def classify(status: int | None, gateway_failure: bool) -> Result:
    if gateway_failure or status in GATEWAY_STATUSES:
        return GATEWAY_ERROR
    if status is not None and status >= 500:
        return SERVER_ERROR
    return SUCCESS

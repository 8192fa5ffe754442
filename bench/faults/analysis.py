"""What the clients saw, phase by phase, and which of it each policy documents.

`load(path)` reads the client's request lines. `Windows` turns the soak's events into the intervals in which a
documented failure may happen; `judge(req, windows)` sorts one request into:

- `ok`: 2xx;
- `documented`: a failure a policy documents for this situation (docs/policies.md, docs/configuration.md,
  docs/balancer.md), named by `why`:
    - `429 rate_limited` with `RateLimit` headers for the `hot` client on `limited` (over its limit, whenever
      the store answers); `limited` fails open, so a 429 without them there is unexpected;
    - `429` without `RateLimit` headers on `quota` while Redis is hung or down, plus `REDIS_GRACE_S`
      (`on_error: closed`); the same while Redis is up is documented too ("slower than `timeout_s`") but reported
      as a finding (`STORE_SLOW`): Redis answers in microseconds, so it is the gateway's own delay. But when
      gatewatch's log shows that it declared the store down for another reason than timeouts (e.g. a
      `ConnectionError` on a pooled connection that died with an earlier Redis) while Redis was up, the 429s
      of that outage are `unexpected`: Redis was neither unreachable nor slow;
    - 502/503/504 or a cut connection within `KILL_GRACE_S` of an instance being SIGKILLed (requests in flight on
      it when it died, until health checks or outlier detection eject it); at most `concurrency` per instance
      killed, enforced by the criterion, not here;
- `unexpected`: anything else, in any phase (a request lost to a worker's SIGTERM or a reload included).

The client retries, once and on a new connection, a GET that got no byte of an answer on a reused keep-alive
connection (the keep-alive race of RFC 9112 §9.3.1, as HTTP clients do); such a request is judged by the retry's
outcome and counted per phase in `keepalive_race` (with `_reset`: the close was a TCP reset, and `_failed`: the
retry failed in a way no policy documents), so the table shows how often the gateway closed a connection under a
request.

`phase_stats` gives each phase's row: counts by class, latency percentiles, and the unexpected ones by kind.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from datetime import datetime

KILL_GRACE_S = 6.0  # health checks: 2 failed probes 1 s apart (+ 0.5 s timeout, ± 0.1 s jitter), with margin
REDIS_GRACE_S = 3.0  # retry_after_s (1 s) before the store is tried again, plus reconnecting
# A quota 429 without RateLimit headers while Redis was up: the limiter's "store unavailable" verdict, which the
# docs give for a store "slower than timeout_s" or no free connection within timeout_s. Allowed, but a finding.
STORE_SLOW = "closed-limiter 429 while Redis up"
HOT = "hot over limit"
STORE_DOWN = "closed-limiter 429, Redis down"
KILLED = "in flight at kill"


@dataclass(slots=True)
class Req:
    t: float
    route: str
    variant: str
    status: int
    latency: float
    kind: str
    reused: bool
    gen: str
    backend: str
    flags: str


def load(path) -> list[Req]:
    out = []
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) != 10:
                continue
            out.append(Req(float(p[0]), p[1], p[2], int(p[3]), float(p[4]), p[5], p[6] == "1", p[7], p[8], p[9]))
    out.sort(key=lambda r: r.t)
    return out


@dataclass
class Windows:
    redis_down: list[tuple[float, float]] = field(default_factory=list)
    kills: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, instances killed
    # while Redis was up: a gatewatch process declared the store down for a reason other than timeouts
    store_errors: list[tuple[float, float, str]] = field(default_factory=list)

    @classmethod
    def of(cls, events: list[dict], t_end: float, gateway_log: str = "", wall_minus_mono: float = 0.0) -> Windows:
        w = cls()
        down_since = None
        for e in events:
            a, t = e["action"], e["t"]
            if a in ("redis_hang", "redis_stop") and down_since is None:
                down_since = t
            elif a == "redis_start" and down_since is not None:
                w.redis_down.append((down_since, t + REDIS_GRACE_S))
                down_since = None
            elif a.startswith("kill_"):
                w.kills.append((t, t + KILL_GRACE_S, len(a[5:].split("_"))))
        if down_since is not None:
            w.redis_down.append((down_since, t_end))
        w.store_errors = [(t, end, why) for t, end, why in store_outages(gateway_log, wall_minus_mono)
                          if why != "timeouts" and not w.in_redis_down(t + 0.5)]
        return w

    def store_error_at(self, t: float) -> str | None:
        return next((why for a, b, why in self.store_errors if a <= t <= b), None)

    def in_redis_down(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.redis_down)

    def kill_at(self, r: Req) -> int | None:
        """The kill whose window this request overlaps: in flight when the instance died, or started before
        it could have been ejected."""
        return next((i for i, (a, b, _) in enumerate(self.kills) if r.t <= b and r.t + r.latency >= a), None)


_STORE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ gatewatch\.policies\.ratelimit: "
                         r"rate-limit store \S+ (unavailable \((\w+)\)|available again)")


def store_outages(text: str, wall_minus_mono: float, retry_after_s: float = 1.0) -> list[tuple[float, float, str]]:
    """(start, end, reason) of each time a gatewatch process declared the rate-limit store down (its WARNING
    `unavailable (reason)`), on the soak's monotonic clock. The policy whose command failed skips the store for
    `retry_after_s` whatever the log says next (the `available again` may come from another policy on the same
    store), so the window is [t - 0.5 s (requests already waiting on the failing command), t + retry_after_s +
    0.5 s]."""
    out = []
    for line in text.splitlines():
        m = _STORE_LINE.match(line)
        if m and m.group(4):
            wall = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            t = wall - wall_minus_mono
            out.append((t - 0.5, t + retry_after_s + 0.5, m.group(4)))
    return out


def failed(r: Req) -> bool:
    return r.status == 0 or r.status >= 400


def judge(r: Req, w: Windows) -> tuple[str, str]:
    """(class, why): class is ok | documented | unexpected."""
    if 200 <= r.status < 300:
        return "ok", ""
    over_limit = "r" in r.flags  # a 429 with RateLimit headers: over the limit; without: store undecided
    if r.status == 429 and r.route == "limited" and r.variant == "hot" and over_limit:
        return "documented", HOT
    if r.status == 429 and r.route == "quota" and not over_limit:
        if w.in_redis_down(r.t):
            return "documented", STORE_DOWN
        why = w.store_error_at(r.t)
        if why:  # Redis answers; gatewatch took the store for down on an error, not on slowness
            return "unexpected", f"closed-limiter 429 while Redis up: gatewatch declared the store down ({why})"
        return "documented", STORE_SLOW
    if (r.status in (502, 503, 504) or r.status == 0) and w.kill_at(r) is not None:
        return "documented", f"{KILLED} {w.kill_at(r) + 1}"
    return "unexpected", ""


def outcome(r: Req) -> str:
    return r.kind if r.status == 0 else str(r.status)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def phase_stats(reqs: list[Req], phases: list[tuple[str, float, float]], w: Windows) -> list[dict]:
    rows = []
    for name, t0, t1 in phases:
        sel = [r for r in reqs if t0 <= r.t < t1]
        row = {"phase": name, "start": t0, "end": t1, "requests": len(sel), "2xx": 0,
               "4xx": collections.Counter(), "5xx": collections.Counter(), "errors": collections.Counter(),
               "documented": collections.Counter(), "unexpected": collections.Counter(),
               "keepalive_race": 0, "keepalive_race_reset": 0, "keepalive_race_failed": 0,
               "stale_reconnects": 0, "by_route": collections.Counter()}
        for r in sel:
            cls, why = judge(r, w)
            if 200 <= r.status < 300:
                row["2xx"] += 1
            elif 400 <= r.status < 500:
                row["4xx"][r.status] += 1
            elif r.status >= 500:
                row["5xx"][r.status] += 1
            elif r.status == 0:
                row["errors"][r.kind] += 1
            if cls == "documented":
                row["documented"][why] += 1
            elif cls == "unexpected":
                row["unexpected"][f"{r.route}/{r.variant} {outcome(r)}" + (f" ({why})" if why else "")] += 1
            if "k" in r.flags:
                row["keepalive_race"] += 1
                row["keepalive_race_reset"] += "x" in r.flags
                row["keepalive_race_failed"] += cls == "unexpected"
            row["by_route"][f"{r.route}/{r.variant}/{outcome(r)}"] += 1
            row["stale_reconnects"] += "s" in r.flags
        lat = [r.latency for r in sel]
        row["p50"], row["p99"], row["max"] = pct(lat, 0.50), pct(lat, 0.99), max(lat) if lat else None
        row["gens"] = collections.Counter(r.gen for r in sel if r.status == 200)
        row["hot_429"] = sum(1 for r in sel if r.route == "limited" and r.variant == "hot" and r.status == 429)
        row["hot_total"] = sum(1 for r in sel if r.route == "limited" and r.variant == "hot")
        row["backends"] = collections.Counter(r.backend for r in sel if r.status == 200)
        rows.append(row)
    return rows


def kill_budget(reqs: list[Req], w: Windows, concurrency: int) -> list[dict]:
    """Per kill: failures in its window (documented) against the bound of one per connection per instance."""
    out = []
    for i, (a, b, n) in enumerate(w.kills):
        fails = [r for r in reqs if judge(r, w)[1] == f"{KILLED} {i + 1}"]
        out.append({"kill": i + 1, "instances": n, "failures": len(fails), "bound": concurrency * n,
                    "last_failure_after_s": max((r.t + r.latency - a for r in fails), default=None),
                    "kinds": collections.Counter(outcome(r) for r in fails)})
    return out


def latency_check(reqs: list[Req], bounds: dict[str, float], margin_s: float) -> dict[str, dict]:
    out = {}
    for route, bound in bounds.items():
        sel = [r for r in reqs if r.route == route]
        worst = max(sel, key=lambda r: r.latency, default=None)
        over = [r for r in sel if r.latency > bound + margin_s]
        out[route] = {"bound_s": bound, "limit_s": bound + margin_s, "max_s": worst.latency if worst else None,
                      "max_outcome": outcome(worst) if worst else None, "over": len(over),
                      "client_timeouts": sum(1 for r in sel if r.kind == "client_timeout")}
    return out

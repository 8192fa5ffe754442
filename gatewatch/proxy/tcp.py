"""The decisions and the record of L4 TCP pass-through connections; the bytes are `gatewatch.io.tcp_proxy`'s.

The I/O end (a `mode: tcp` listener) never sees a pool: per client connection it asks `TcpSessions.open` for a
`TcpSession` and tells it what happens, in this order:
- `pick() -> (host, port) | None`: the pool's algorithm over its current view (health checks, outlier ejection,
  draining, connection limits; ring_hash/maglev hash the client's IP address: a tcp listener's pool
  must have `hash_key.source: client_address`), excluding the instances this
  connection already tried. Recorded as a `gatewatch.decision.pick` (and `.failover` when a retry moves to
  another instance). None: nothing can take it (`no_healthy_upstream` / `upstream_overflow`), or the connect
  attempts are used up. The picked instance is acquired (`pool.acquire`) until the connection ends.
- `connect_failed(error_type, connect_s)`: counted against the instance (`pool.observe(GATEWAY_ERROR)`) and
  released; the next `pick` may retry elsewhere (nothing was sent yet, so a retry is always safe).
- `connected(peer, connect_s)` -> the (received, sent) byte counters of the instance, for the relay to add to.
- `judge(ok)`: the first byte from the instance (or its clean close) is a success for outlier detection; a reset
  before any byte a failure.
- `finish(outcome, error_type, closed_by, received, sent)`: exactly once. The instance is released; metrics
  (`gatewatch_tcp_*`, decisions, failovers, pool requests) and the record (SERVER span `tcp {listener}`, a
  CLIENT span `tcp {pool}` per connect attempt, decision logs; `telemetry.convert.tcp_models`) are written.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from gatewatch.balancer.algorithms import Endpoint
from gatewatch.balancer.context import PickContext
from gatewatch.balancer.health import Result
from gatewatch.balancer.pool import Pool
from gatewatch.proxy import recording
from gatewatch.telemetry.context import (
    AttemptRecord,
    RequestRecord,
    hex64,
    hex128,
    new_span_id,
    start_trace,
)
from gatewatch.telemetry.names import (
    ALLOW_RESULTS,
    DecisionKind,
    Layer,
    Reason,
    TcpClosedBy,
    TcpOutcome,
)

BALANCER = Layer.BALANCER.value
HASHING = frozenset({"ring_hash", "maglev"})
# The outcomes a connection that reached an instance can end with (present at 0 per instance), and the others.
INSTANCE_OUTCOMES = (TcpOutcome.PROXIED, TcpOutcome.CLIENT_ABORT, TcpOutcome.UPSTREAM_ERROR,
                     TcpOutcome.UPSTREAM_CONNECT_ERROR, TcpOutcome.UPSTREAM_TIMEOUT, TcpOutcome.IDLE_TIMEOUT,
                     TcpOutcome.DRAIN_CUT)
POOL_OUTCOMES = (TcpOutcome.NO_HEALTHY_UPSTREAM, TcpOutcome.UPSTREAM_OVERFLOW, TcpOutcome.CONNECTION_LIMIT,
                 TcpOutcome.CLIENT_ABORT)


class TcpSessions:
    """One `mode: tcp` listener's side of the balancer: its settings, the pools (a reload may replace them),
    the telemetry, the config version of the connections it opens."""

    def __init__(self, listener: str, settings, pools: Callable[[], Mapping[str, Pool]], telemetry,
                 config_version: str, rng: random.Random | None = None):
        self.listener = listener
        self.settings = settings
        self.pools = pools
        self.telemetry = telemetry
        self.metrics = telemetry.metrics
        self.config_version = config_version
        self.rng = rng or random.Random()
        self._children: dict[str, tuple] = {}  # instance id -> its metric children (labels() costs microseconds)
        self.init_series()

    def children(self, instance: str) -> tuple:
        """(connect-ok histogram, active gauge, received counter, sent counter) of an instance of the pool."""
        c = self._children.get(instance)
        if c is None:
            m, lst, pool = self.metrics, self.listener, self.settings.pool
            c = self._children[instance] = (
                m.tcp_connect_duration.labels(pool, instance, "ok"), m.tcp_active.labels(lst, pool, instance),
                m.tcp_received.labels(lst, pool, instance), m.tcp_sent.labels(lst, pool, instance))
        return c

    def init_series(self) -> None:
        """The listener's series at 0: per instance of its pool each outcome, the gauge, bytes and connects."""
        m, pool_name = self.metrics, self.settings.pool
        pool = self.pools().get(pool_name)
        for outcome in POOL_OUTCOMES:
            m.tcp_connections.labels(self.listener, pool_name, "", outcome.value)
        for ep in (pool.endpoints if pool is not None else ()):
            for outcome in INSTANCE_OUTCOMES:
                m.tcp_connections.labels(self.listener, pool_name, ep.id, outcome.value)
            m.tcp_active.labels(self.listener, pool_name, ep.id)
            m.tcp_received.labels(self.listener, pool_name, ep.id)
            m.tcp_sent.labels(self.listener, pool_name, ep.id)
            m.tcp_connect_duration.labels(pool_name, ep.id, "ok")

    def refused(self) -> None:
        """A connection over the listener's `max_connections` (reset at once): counted, nothing else."""
        self.metrics.tcp_connections.labels(self.listener, self.settings.pool, "",
                                            TcpOutcome.CONNECTION_LIMIT.value).inc()

    def open(self, peer: tuple[str, int], local: tuple[str, int]) -> TcpSession:
        return TcpSession(self, peer, local)


class TcpSession:
    """One client connection's picks, attempts and record."""

    def __init__(self, sessions: TcpSessions, peer: tuple[str, int], local: tuple[str, int]):
        self.sessions = sessions
        s = self.settings = sessions.settings
        rng, tc = sessions.rng, sessions.telemetry.config
        self.rec = RequestRecord(
            layer=BALANCER, trace=start_trace(None, None, None, "ignore", tc.sampling_ratio, rng, tc.parent_based),
            start_ns=time.time_ns(), start_mono=time.monotonic(), method="", path="", query="", scheme="tcp",
            host=local[0], server_port=local[1], client_address=peer[0], client_port=peer[1],
            protocol_version="", user_agent=None, request_id=hex64(rng.getrandbits(64)),
            listener=sessions.listener, upstream=s.pool, config_version=sessions.config_version)
        self.pool: Pool | None = sessions.pools().get(s.pool)  # None: a reload removed it (config checks prevent)
        self.ctx: PickContext | None = None
        if self.pool is not None:
            hashing = self.pool.algorithm.value in HASHING
            self.ctx = PickContext(self.pool, peer[0] if hashing else None, None)
        self.endpoint: Endpoint | None = None
        self.attempt: AttemptRecord | None = None
        self.attempts = 0
        self.outcome: str | None = None  # why pick() returned None
        self.held = False  # the endpoint is acquired
        self.active = False  # counted in the active gauge

    def pick(self) -> tuple[str, int] | None:
        if self.pool is None:
            self.outcome = TcpOutcome.NO_HEALTHY_UPSTREAM.value
            return None
        if self.attempts >= self.settings.connect_attempts:
            return None  # the last connect failure's outcome stands
        rec, pool = self.rec, self.pool
        p = self.ctx.pick(self.sessions.rng)
        now_ns = time.time_ns()
        lb = recording.pick(rec, p, now_ns)
        ep = p.endpoint
        if ep is None:
            if self.attempt is None:  # else: what ended it is the last connect failure
                self.outcome = (TcpOutcome.UPSTREAM_OVERFLOW if p.reason == Reason.PICK_OVERFLOW.value else
                                TcpOutcome.NO_HEALTHY_UPSTREAM).value
            return None
        previous = self.endpoint
        if previous is not None and previous.id != ep.id:
            recording.failover(rec, pool.name, previous.id, ep.id, now_ns)
        self.endpoint = ep
        self.attempt = AttemptRecord(
            span_id=new_span_id(self.sessions.rng), layer=BALANCER, upstream=pool.name, instance=ep.id,
            zone=ep.zone, host=ep.host, port=ep.port, url_full="", method="", resend_count=self.attempts,
            start_ns=now_ns, lb=lb)
        rec.attempts.append(self.attempt)
        self.attempts += 1
        pool.acquire(ep)
        self.held = True
        return ep.host, ep.port

    def connect_failed(self, error_type: str, timed_out: bool, connect_s: float | None) -> None:
        a, ep, pool = self.attempt, self.endpoint, self.pool
        self._release()
        a.error_type = error_type
        self.ctx.tried(ep.id)
        if connect_s is None:  # the client left (or a drain cut it) while connecting: not the instance's fault
            return
        a.connect_s, a.end_ns = connect_s, time.time_ns()
        a.outcome = self.outcome = (TcpOutcome.UPSTREAM_TIMEOUT if timed_out else
                                    TcpOutcome.UPSTREAM_CONNECT_ERROR).value
        self.sessions.metrics.tcp_connect_duration.labels(pool.name, ep.id, error_type).observe(connect_s)
        if pool.passive_health:
            pool.observe(ep.id, Result.GATEWAY_ERROR, hex128(self.rec.trace.trace_id), hex64(a.span_id))

    def connected(self, peer: tuple[str, int] | None, connect_s: float):
        a = self.attempt
        a.connect_s = connect_s
        if peer:
            a.peer_address, a.peer_port = peer[0], peer[1]
        connect_ok, active, received, sent = self.sessions.children(self.endpoint.id)
        connect_ok.observe(connect_s)
        active.inc()
        self.active = True
        self.outcome = None
        return received, sent

    def judge(self, ok: bool) -> None:
        if self.pool.passive_health:
            self.pool.observe(self.endpoint.id, Result.SUCCESS if ok else Result.GATEWAY_ERROR,
                              hex128(self.rec.trace.trace_id), hex64(self.attempt.span_id))

    def _release(self) -> None:
        if self.held:
            self.held = False
            self.pool.release(self.endpoint)

    def finish(self, outcome: str | None, error_type: str | None, closed_by: str | None, received: int,
               sent: int) -> None:
        rec, m, lst = self.rec, self.sessions.metrics, self.sessions.listener
        self._release()
        rec.end_ns = time.time_ns()
        rec.duration_s = time.monotonic() - rec.start_mono
        rec.outcome = outcome or self.outcome or TcpOutcome.PROXIED.value
        rec.error_type = error_type or (self.attempt.error_type if self.attempt is not None and not self.active
                                        else None)
        a = self.attempt
        instance = a.instance if a is not None else ""
        if a is not None:
            if a.end_ns == 0:  # the relayed connection (or the attempt the client left): its span ends now
                a.end_ns = rec.end_ns
                a.outcome = rec.outcome
                a.error_type = a.error_type or error_type
            a.duration_s = (a.end_ns - a.start_ns) / 1e9
        if self.active:
            self.sessions.children(instance)[1].dec()
        rec.tcp = (received, sent, closed_by or TcpClosedBy.PROXY.value,
                   "ipv6" if ":" in rec.client_address else "ipv4",
                   None if self.settings.proxy_protocol == "none" else self.settings.proxy_protocol)
        m.tcp_connections.labels(lst, rec.upstream, instance, rec.outcome).inc()
        self._record(rec)

    def _record(self, rec: RequestRecord) -> None:
        tel = self.sessions.telemetry
        decisions = tel.metrics.decisions
        for d in rec.decisions:
            decisions.inc((d.layer or rec.layer, d.kind.value, d.result, d.reason))
            if d.kind is DecisionKind.FAILOVER:
                tel.metrics.failovers.labels(d.rule, d.reason).inc()
        if rec.failover is not None:  # a pool served it: normally, or while failing over (as for HTTP requests)
            tel.metrics.pool_requests.inc((rec.upstream, rec.failover))
        if any(d.result not in ALLOW_RESULTS for d in rec.decisions):  # no candidates, failed over: the admin page
            tel.journal.add(rec)
        if tel.sink is None:
            return
        if not rec.trace.sampled and rec.decisions and tel.config.allow_decision_logs == "sampled":
            rec.decisions = [d for d in rec.decisions if d.result not in ALLOW_RESULTS]  # volume control (DESIGN §4)
        if rec.trace.sampled or rec.decisions:
            tel.sink.submit(rec)

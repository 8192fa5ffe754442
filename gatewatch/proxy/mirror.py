"""Request mirroring (issue 19): a copy of a share of a route's requests to a shadow upstream, fire-and-forget.

The client's answer never waits for a shadow and never changes because of one: the shadow runs in its own task,
its response body is read and discarded, and its failures stay its own. What it costs is bounded:
- at most `max_in_flight` shadows of a route at once (counted across reloads: the count lives in the engine's
  `Mirrors`, not in a snapshot); a request over the bound is not copied (`skipped_full`), never queued;
- bodies up to `max_body_bytes`, copied as the primary attempt reads them (the client's upload is never held
  back for the copy). A body declared larger is `skipped_body`; one of unknown length (chunked), or one the
  primary did not read to its end, is `skipped_streamed`. A bodiless request is decided at once;
- its own timeout (`timeout_s`, the whole exchange: connect, response head and the body read).

Decisions (`MirrorResult`) are recorded in the primary's record like any other (`gatewatch.decision.mirror`,
`gatewatch.mirror.*` on its SERVER span). The shadow is one CLIENT span, a child of the primary's SERVER span in
the same trace (`telemetry.convert.shadow_models` says why a child), with `gatewatch.mirror = true`, its outcome
and its comparison with the primary: same status class, differs, shadow error, shadow timeout
(`MirrorMatch`, `gatewatch_mirror_comparisons_total`) and the latency difference
(`gatewatch_mirror_latency_delta_seconds`: the shadow's exchange minus the primary's PICK → RESPONSE time). It is
exported once both are done, as a record of its own (`RequestRecord.mirror`): the primary's record never waits.

The shadow request is the primary's upstream request (same target, headers, policy header changes) with the
shadow span's `traceparent`, `x-gatewatch-mirror: 1`, and `Host` = `mirror.host` when set. A pool shadow is
picked like a first attempt (no hash key, no affinity) and holds the instance's in-flight slot while it runs;
it does not feed the pool's passive health (a shadow is not traffic the pool's clients depend on).
Primitives: `MirrorTarget` (compiled, in a snapshot), `Mirrors` (engine-owned: `begin`, `primary_done`, `close`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, AsyncIterator

from gatewatch.balancer.context import PickContext
from gatewatch.balancer.pool import Pool
from gatewatch.edge.config import MirrorConfig
from gatewatch.io.interfaces import UpstreamFailure, UpstreamRequest
from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, RequestRecord, hex128, new_span_id
from gatewatch.telemetry.names import (Attr, DecisionKind, ErrorType, Layer, MirrorMatch, MirrorResult, Outcome,
                                       Reason)

log = logging.getLogger("gatewatch.mirror")
MIRROR_HEADER = "x-gatewatch-mirror"
SENT, FULL, BODY, STREAMED, NO_INSTANCE = (r.value for r in (
    MirrorResult.SENT, MirrorResult.SKIPPED_FULL, MirrorResult.SKIPPED_BODY, MirrorResult.SKIPPED_STREAMED,
    MirrorResult.SKIPPED_NO_INSTANCE))
PERCENT = Reason.MIRROR_PERCENT.value
TIMEOUTS = frozenset({ErrorType.RESPONSE_TIMEOUT.value, ErrorType.READ_TIMEOUT.value,
                      ErrorType.CONNECT_TIMEOUT.value})
BALANCER = Layer.BALANCER.value


@dataclasses.dataclass(frozen=True, slots=True)
class MirrorTarget:
    """A route's mirror, compiled: the shadow upstream (a pool of this process or a URL upstream) and the bounds."""

    route: str
    upstream: str
    pool: Pool | None
    remote: Any  # snapshot.RemoteTarget
    config: MirrorConfig


class Flight:
    """One shadow, from the decision to send it until both it and the primary are done."""

    __slots__ = ("target", "ctx_rec", "body", "length", "decided", "slot", "record", "task", "begun", "shadow_s",
                 "primary_status", "primary_s", "primary_done", "shadow_done", "answered")

    def __init__(self, target: MirrorTarget, rec: RequestRecord, begun: float):
        self.target = target
        self.ctx_rec = rec
        self.body: list[bytes] | None = None  # the copy of the request body, as the primary reads it
        self.length = 0  # its declared length
        self.decided = False
        self.slot = False  # holds one of the route's max_in_flight
        self.record: AttemptRecord | None = None
        self.task: asyncio.Task | None = None
        self.begun = begun  # monotonic: the primary's PICK
        self.shadow_s = 0.0
        self.primary_status: int | None = None
        self.primary_s = 0.0
        self.primary_done = self.shadow_done = False
        self.answered = False  # the shadow's response head came in


class Mirrors:
    """The engine's mirror machinery: live across reloads (in-flight counts per route), one per engine."""

    def __init__(self, engine):
        self.engine = engine  # its forwarder, telemetry, clocks, rng and the upstream request builder
        self.in_flight: dict[str, int] = {}
        self.tasks: set[asyncio.Task] = set()
        m = engine.telemetry.metrics
        self._requests, self._comparisons, self._delta = m.mirror_requests, m.mirror_comparisons, \
            m.mirror_latency_delta

    # --- decisions, in the primary's PICK → UPSTREAM ---

    def begin(self, ctx, target: MirrorTarget) -> None:
        """Called once per request at PICK: is this request copied (`percent`), and can it be now?"""
        cfg = target.config
        e = self.engine
        if cfg.percent < 100.0 and e.rng.random() * 100.0 >= cfg.percent:
            return
        flight = ctx.mirror = Flight(target, ctx.rec, e.monotonic())
        head = ctx.head
        if not head.has_body:
            self._decide(ctx, flight)
            return
        declared = head.header("content-length")
        if declared is None or not declared.isdigit():  # chunked: copying it would mean holding it back
            self._record(flight, STREAMED)
            return
        if int(declared) > cfg.max_body_bytes:
            self._record(flight, BODY)
            return
        flight.body, flight.length = [], int(declared)
        ctx.body = self._tee(ctx, flight, ctx.body)

    async def _tee(self, ctx, flight: Flight, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The client's body as the primary reads it, copied on the way; the shadow is decided once it is whole."""
        size = 0
        async for chunk in body:
            if flight.body is not None and not flight.decided:
                size += len(chunk)
                if size > flight.length:  # more than declared: not ours to judge, just not copied
                    flight.body = None
                else:
                    flight.body.append(chunk)
                    if size == flight.length:  # whole: decided now, whether or not the reader asks for more
                        self._decide(ctx, flight)
            yield chunk

    def _decide(self, ctx, flight: Flight) -> None:
        target = flight.target
        count = self.in_flight.get(target.route, 0)
        if count >= target.config.max_in_flight:
            self._record(flight, FULL)
            return
        e = self.engine
        a = self._attempt(ctx, target)
        if a is None:
            self._record(flight, NO_INSTANCE)
            return
        request = e._upstream_request(ctx, a)
        request = self._shadow_request(request, target.config, flight)
        self.in_flight[target.route] = count + 1
        flight.slot = True
        flight.record = a.record
        self._record(flight, SENT)
        if a.endpoint is not None:
            target.pool.acquire(a.endpoint)
        task = asyncio.get_running_loop().create_task(self._shadow(flight, request, a.endpoint))
        flight.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _attempt(self, ctx, target: MirrorTarget):
        """The shadow's attempt context (picked like a first attempt of a pool, or the URL upstream)."""
        from gatewatch.proxy.context import AttemptContext  # the engine's context module imports this one
        e = self.engine
        if target.pool is not None:
            p = PickContext(target.pool, None, None).pick(e.rng)
            ep = p.endpoint
            if ep is None:
                return None
            a = AttemptContext(0, ep.host, ep.port, target.pool.scheme, ep.id, ep.zone, BALANCER, ep, {})
        else:
            r = target.remote
            a = AttemptContext(0, r.host, r.port, r.scheme, r.instance, None, e.layer_value, None, {})
        a.record = AttemptRecord(
            span_id=new_span_id(e.rng), layer=a.layer, upstream=target.upstream, instance=a.instance, zone=a.zone,
            host=a.host, port=a.port, url_full="", method=ctx.head.method, resend_count=0, start_ns=e.clock_ns())
        a.record.lb = {Attr.MIRROR: True}
        return a

    @staticmethod
    def _shadow_request(request: UpstreamRequest, cfg: MirrorConfig, flight: Flight) -> UpstreamRequest:
        headers = [(k, v) for k, v in request.headers if k.lower() != MIRROR_HEADER]
        if cfg.host is not None:
            headers = [("Host", cfg.host) if k.lower() == "host" else (k, v) for k, v in headers]
        headers.append((MIRROR_HEADER, "1"))
        return dataclasses.replace(request, headers=tuple(headers), has_body=flight.body is not None)

    def _record(self, flight: Flight, result: str) -> None:
        flight.decided = True
        target, rec, e = flight.target, flight.ctx_rec, self.engine
        self._requests.inc((target.route, target.upstream, result))
        rec.decisions.append(DecisionRecord(DecisionKind.MIRROR, target.route, result, PERCENT, e.clock_ns(),
                                            rec.trace.span_id, {Attr.MIRROR_UPSTREAM: target.upstream}))
        attrs = {Attr.MIRROR_UPSTREAM: target.upstream, Attr.MIRROR_RESULT: result}
        rec.span_attrs = attrs if rec.span_attrs is None else {**rec.span_attrs, **attrs}

    # --- the shadow's own exchange ---

    async def _shadow(self, flight: Flight, request: UpstreamRequest, endpoint) -> None:
        target, record, e = flight.target, flight.record, self.engine
        timeout = target.config.timeout_s
        started = e.monotonic()
        body = _replay(flight.body) if flight.body is not None else None
        response = None
        try:
            async with asyncio.timeout(timeout):
                response = await e.forwarder.send(target.upstream, request, body, timeout, timeout, timeout, record)
                record.status = response.status
                record.peer_address, record.peer_port = response.peer_address, response.peer_port
                flight.answered = True
                async for _ in response.body():  # read and discarded: the shadow's answer goes nowhere
                    pass
            record.outcome = Outcome.PROXIED.value
        except UpstreamFailure as failure:
            record.error_type = failure.error_type.value
        except TimeoutError:
            record.error_type = (ErrorType.READ_TIMEOUT if flight.answered else ErrorType.RESPONSE_TIMEOUT).value
        except asyncio.CancelledError:
            record.error_type = ErrorType.INTERNAL.value
            raise
        except Exception:
            log.exception("mirror of route %s to %s: internal error", target.route, target.upstream)
            record.error_type = ErrorType.INTERNAL.value
        finally:
            if response is not None:
                response.close()
            flight.shadow_s = record.duration_s = e.monotonic() - started
            record.end_ns = e.clock_ns()
            if record.error_type is not None:
                record.outcome = (Outcome.UPSTREAM_TIMEOUT if record.error_type in TIMEOUTS
                                  else Outcome.UPSTREAM_ERROR).value
            self.in_flight[target.route] -= 1
            if endpoint is not None:
                target.pool.release(endpoint)
            flight.shadow_done = True
            if flight.primary_done:
                self._compare(flight)

    # --- the primary is done (the engine's `_end`, before its record is finished) ---

    def primary_done(self, ctx) -> None:
        flight = ctx.mirror
        if not flight.decided:  # a body the primary did not read to its end: never copied whole
            self._record(flight, STREAMED)
        if not flight.slot:
            return
        flight.primary_status = ctx.rec.status
        flight.primary_s = self.engine.monotonic() - flight.begun
        flight.primary_done = True
        if flight.shadow_done:
            self._compare(flight)

    def _compare(self, flight: Flight) -> None:
        target, record = flight.target, flight.record
        labels = (target.route, target.upstream)
        primary, shadow = flight.primary_status, record.status
        if record.error_type in TIMEOUTS:  # no head, or a body still coming, within timeout_s
            match = MirrorMatch.SHADOW_TIMEOUT
        elif record.error_type is not None:
            match = MirrorMatch.SHADOW_ERROR
        elif primary is not None and primary // 100 == shadow // 100:
            match = MirrorMatch.SAME_STATUS_CLASS
        else:
            match = MirrorMatch.DIFFERS
        self._comparisons.inc(labels + (match.value,))
        lb = record.lb
        lb[Attr.MIRROR_MATCH] = match.value
        if primary is not None:
            lb[Attr.MIRROR_PRIMARY_STATUS] = primary
        if shadow is not None and record.error_type is None:
            delta = flight.shadow_s - flight.primary_s
            lb[Attr.MIRROR_LATENCY_DELTA] = round(delta, 6)
            rec = flight.ctx_rec
            trace_id = hex128(rec.trace.trace_id) if rec.trace.sampled else None
            self._delta.observe(labels, delta, trace_id)
        self._export(flight)

    def _export(self, flight: Flight) -> None:
        telemetry, rec = self.engine.telemetry, flight.ctx_rec
        if telemetry.sink is None or not rec.trace.sampled:
            return
        shadow = dataclasses.replace(
            rec, upstream=flight.target.upstream, attempts=[flight.record], decisions=[], policies=[], lb={},
            span_attrs=None, balance_span_id=None, event_ids=None, policy_durations=None, mirror=True,
            start_ns=flight.record.start_ns, end_ns=flight.record.end_ns)
        telemetry.sink.submit(shadow)

    async def close(self) -> None:
        """Cancel shadows still running (shutdown): each is counted and exported as it ends."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk

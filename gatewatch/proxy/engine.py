"""The engine: the only code that sequences a request's phases, loops and catches. Both tiers run it.

    ROUTE → POLICY → PICK → UPSTREAM → RESPONSE → LOG

Each phase is a method over the request's `RequestContext` (and, per attempt, an `AttemptContext`):
- `route(ctx)`     canonical path, `Router.match` (pure). Returns the outcome to answer (400, 404) or None.
- `policy(ctx)`    the route's policies in declared order; the first blocking verdict is answered locally.
                   Returns whether the request goes on. Every evaluated policy learns the result at the end.
- `forward(ctx)`   the attempt loop: `pick` → `attempt` → on a failure the client has not seen, `retry` weighs
                   another try (`balancer.retry`: method, what reached the upstream, retry_on, attempts, deadline,
                   budget).
- `pick(ctx, ...)` a pool of this process (`balancer.context.PickContext`: affinity, algorithm, what was
                   tried; traced as an INTERNAL span of the balancer layer in an edge process) or a URL upstream.
- `attempt(ctx, a)` one try through the `Forwarder`; a failure before the client saw anything comes back to
                   the loop, anything else is settled here.
- `respond(ctx, a, response)` relays the head and streams the body; a failure after the head went out aborts
                   the client connection, so a truncated body can never look complete.
- `record(ctx)`    LOG: `Telemetry.finish(record)`, exactly once, in `finally`.

Decisions are recorded as they are taken (`proxy.recording`); nothing here calls a tracer or a logger for a
request. Every phase reads the request's own snapshot (`ctx.snap`), so a reload mid-request changes nothing for
it. Guarantee: every request gets exactly one of a relayed response, a locally generated answer or an aborted
connection, and exactly one record.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import AsyncIterator, Callable, NamedTuple

from gatewatch.balancer.context import PickContext
from gatewatch.balancer.health import Result, classify
from gatewatch.balancer.retry import Body, Failure, RetryState, failure_of
from gatewatch.edge.paths import InvalidPath, canonical_path, split_target, strip_prefix, target_authority
from gatewatch.edge.policies.base import PolicyRequest
from gatewatch.edge.routing import NoRoute
from gatewatch.io.interfaces import (ClientGone, Downstream, Forwarder, RequestHead, UpstreamFailure, UpstreamRequest,
                                     UpstreamResponse)
from gatewatch.proxy import headers as hdr
from gatewatch.proxy import recording, request_keys
from gatewatch.proxy.answers import FAILURE_OUTCOME, error_body
from gatewatch.proxy.context import AttemptContext, ClientBody, RequestContext
from gatewatch.proxy.snapshot import Snapshot
from gatewatch.telemetry.context import AttemptRecord, RequestRecord, format_traceparent, new_span_id, start_trace
from gatewatch.telemetry.names import OUTCOME_STATUS, ErrorType, Layer, Outcome, Reason
from gatewatch.telemetry.recorder import Telemetry

log = logging.getLogger("gatewatch.engine")

# Plain-str values of the closed vocabularies used on every request (records hold plain strings: they cross a
# pipe to the exporter process, and an Enum attribute lookup costs more than the rest of the bookkeeping).
PROXIED = Outcome.PROXIED.value
CLIENT_ABORT = Outcome.CLIENT_ABORT.value
BALANCER = Layer.BALANCER.value
PICK_OVERFLOW = Reason.PICK_OVERFLOW.value


class Failed(NamedTuple):
    """An attempt that failed before the client saw anything."""

    error_type: ErrorType
    status: int | None = None  # a retryable status the instance answered
    response: UpstreamResponse | None = None  # that answer, unread: relayed as it is if no retry may follow


class Engine:
    def __init__(self, snapshot: Snapshot, forwarder: Forwarder, telemetry: Telemetry, *,
                 clock_ns: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        self.snapshot = snapshot  # swapped whole on reload; a request reads it once, when it arrives
        self.layer = snapshot.layer
        self.layer_value = snapshot.layer.value
        self.forwarder = forwarder
        self.telemetry = telemetry
        self.clock_ns = clock_ns
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.sampling_ratio = telemetry.config.sampling_ratio
        self.parent_based = telemetry.config.parent_based
        self.telemetry_enabled = telemetry.config.enabled  # no traceresponse pointing at spans never exported

    async def handle(self, head: RequestHead, body: AsyncIterator[bytes], down: Downstream) -> None:
        """The listener's entry point (`io.interfaces.RequestHandler`): one parsed request, answered."""
        snap = self.snapshot  # the request keeps the snapshot it started with
        ctx = RequestContext(snap, head, body, down, self._new_record(snap, head), snap.listeners[head.listener])
        try:
            outcome = self.route(ctx)
            if outcome is not None:
                await self._fail(ctx, outcome, None)
            elif not ctx.target.policies:
                await self.forward(ctx)
            else:
                try:
                    if await self.policy(ctx):
                        await self.forward(ctx)
                finally:
                    self._policies_learn(ctx)
        except ClientGone:
            ctx.rec.outcome = CLIENT_ABORT
            ctx.rec.error_type = ErrorType.CLIENT_ABORT.value
        except Exception:
            log.exception("request %s: internal error", ctx.rec.request_id)
            await self._fail(ctx, Outcome.INTERNAL_ERROR, ErrorType.INTERNAL.value)
        finally:
            self.record(ctx)

    def _new_record(self, snap: Snapshot, head: RequestHead) -> RequestRecord:
        traceparent = head.header("traceparent")
        trust = snap.trace_trust[head.listener]
        mode = trust.for_client(head.client_address) if traceparent is not None else trust.mode
        trace = start_trace(traceparent, head.header("tracestate"), head.header("baggage"), mode,
                            self.sampling_ratio, self.rng, self.parent_based)
        path, query = split_target(head.target)
        return RequestRecord(
            layer=self.layer_value, trace=trace, start_ns=self.clock_ns(), start_mono=self.monotonic(),
            method=head.method, path=path, query=query, scheme=head.scheme,
            host=(target_authority(head.target) or head.header("host") or head.server_address),
            server_port=head.server_port,
            client_address=head.client_address, client_port=head.client_port, protocol_version=head.version,
            user_agent=head.header("user-agent"), request_id=hdr.request_id(head.header("x-request-id"), self.rng),
            listener=head.listener, config_version=snap.config_version)

    # --- ROUTE, POLICY ---

    def route(self, ctx: RequestContext) -> Outcome | None:
        """Canonical path (what routing sees is exactly what the upstream gets), then the first matching route."""
        rec = ctx.rec
        try:
            ctx.path = rec.path = canonical_path(rec.path)
        except InvalidPath:
            return Outcome.BAD_REQUEST
        match = ctx.snap.router.match(ctx.path, rec.host, ctx.head.method, ctx.head.index, rec.query)
        recording.route(rec, match, self.clock_ns())
        if isinstance(match, NoRoute):
            return Outcome.NO_ROUTE
        route = ctx.route = match.route
        ctx.target = ctx.snap.targets[route.name]
        rec.route, rec.route_template, rec.upstream = route.name, match.template, route.upstream
        return None

    async def policy(self, ctx: RequestContext) -> bool:
        head, rec = ctx.head, ctx.rec
        req = ctx.policy = PolicyRequest(
            head=head, route=ctx.route.name, path=ctx.path, query=rec.query, client_address=head.client_address,
            body=ctx.body if head.has_body else None, now=self.clock_ns() / 1e9, rng=self.rng,
            trace_id=rec.trace.trace_id, span_id=rec.trace.span_id)
        durations = rec.policy_durations = []
        for policy in ctx.target.policies:
            ctx.evaluated += 1
            started = self.monotonic()
            verdict = await policy.evaluate(req)
            durations.append(self.monotonic() - started)
            recording.policy(rec, verdict, self.clock_ns())
            if verdict.block:
                await self._answer(ctx, verdict.outcome, verdict.status,
                                   verdict.headers + tuple(req.response_headers), verdict.message)
                return False
        rec.consumer = req.consumer
        if req.body is not None:
            ctx.body = req.body
        ctx.path = req.path
        ctx.response_headers.extend(req.response_headers)
        return True

    def _policies_learn(self, ctx: RequestContext) -> None:
        """Every evaluated policy observes how the request ended (circuit breakers), exactly once."""
        req = ctx.policy
        if req is None:
            return
        ctx.rec.consumer = req.consumer
        for policy in ctx.target.policies[:ctx.evaluated]:
            observe = getattr(policy, "observe", None)
            if observe is not None:
                observe(req, ctx.rec.outcome, ctx.rec.status)

    # --- PICK → UPSTREAM, attempt after attempt ---

    async def forward(self, ctx: RequestContext) -> None:
        rec, route, head, target = ctx.rec, ctx.route, ctx.head, ctx.target
        pool = target.pool
        if pool is not None and self.layer is Layer.EDGE:
            # In an edge process the pick is the balancer layer at work: give it its own span so the trace
            # shows both layers. A balancer tier's SERVER span already is the balancer layer.
            rec.balance_span_id = new_span_id(self.rng)
        rec.balance_start_ns = self.clock_ns()
        upstream_target = strip_prefix(ctx.path, route.rewrite.strip_prefix) if route.rewrite.strip_prefix else ctx.path
        ctx.upstream_target = upstream_target + "?" + rec.query if rec.query else upstream_target
        if head.has_body:
            ctx.client_body = ClientBody(ctx.body, route.timeouts.idle_s)
        picking = None if pool is None else PickContext(
            pool, request_keys.hash_key(pool.config.hash_key, head, rec.query) if pool.config.hash_key else None,
            pool.affinity_target(request_keys.cookie(head, pool.config.affinity.cookie))
            if pool.config.affinity else None)
        retries = RetryState(route.retries, target.budget, self.monotonic(), route.timeouts.response_s)
        previous: str | None = None
        try:
            for n in range(route.retries.attempts):
                try:
                    a = self.pick(ctx, picking, n)
                    if isinstance(a, Outcome):
                        await self._fail(ctx, a, None)
                        return
                    if n and pool is not None and previous != a.instance:
                        recording.failover(rec, pool.name, previous, a.instance, self.clock_ns())
                    previous = a.instance
                    a.response_s = retries.attempt_timeout(self.monotonic())
                    failed = await self.attempt(ctx, a)
                finally:
                    retries.attempt_ended(n)
                if failed is None or not await self.retry(ctx, a, failed, retries, picking):
                    return
        finally:
            retries.close()
            rec.balance_end_ns = self.clock_ns()

    def pick(self, ctx: RequestContext, picking: PickContext | None, n: int) -> AttemptContext | Outcome:
        """Where attempt `n` goes: the pool's pick (recorded), or the URL upstream. An Outcome when no
        instance can take it."""
        if picking is None:
            remote = ctx.target.remote
            return AttemptContext(n, remote.host, remote.port, remote.scheme, remote.instance, None,
                                  self.layer_value, None, {})
        p = picking.pick(self.rng)
        lb = recording.pick(ctx.rec, p, self.clock_ns())
        ep = p.endpoint
        if ep is None:
            return Outcome.UPSTREAM_OVERFLOW if p.reason == PICK_OVERFLOW else Outcome.NO_HEALTHY_UPSTREAM
        picking.repin(ctx.response_headers, ep)
        return AttemptContext(n, ep.host, ep.port, "http", ep.id, ep.zone, BALANCER, ep, lb)

    async def retry(self, ctx: RequestContext, a: AttemptContext, failed: Failed, retries: RetryState,
                    picking: PickContext | None) -> bool:
        """After a failed attempt the client has not seen: True to try again (after the backoff), False once the
        request is settled (the failure answered, or a retryable status nobody may retry relayed as it is)."""
        error_type, status, response = failed
        kind = Failure.STATUS if status is not None else failure_of(error_type)
        if picking is not None:
            picking.tried(a.instance)
        body = Body.NONE if ctx.client_body is None else ctx.client_body.state()
        verdict, budget_left = retries.decide(ctx.head.method, kind, a.n + 1, body, self.monotonic())
        if ctx.route.retries.attempts > 1:
            recording.retry(ctx.rec, ctx.route.name, verdict, a.n + 1, budget_left, a.instance, kind,
                            self.clock_ns())
        if not verdict.retry:
            if response is not None:
                await self.respond(ctx, a, response)
            else:
                await self._fail(ctx, FAILURE_OUTCOME.get(error_type, Outcome.UPSTREAM_ERROR), error_type.value)
            return False
        if response is not None:
            response.close()
        pause = retries.pause(a.n + 1, self.rng, self.monotonic())
        started = self.monotonic()
        if pause:
            await asyncio.sleep(pause)
        ctx.backoff_s = self.monotonic() - started  # the time it really took, not the plan
        return True

    async def attempt(self, ctx: RequestContext, a: AttemptContext) -> Failed | None:
        """One attempt. None when the request is settled (relayed, answered, aborted); a `Failed` when it failed
        before the client saw anything (with the response still unread for a retryable status)."""
        rec, route = ctx.rec, ctx.route
        record = a.record = AttemptRecord(
            span_id=new_span_id(self.rng), layer=a.layer, upstream=route.upstream, instance=a.instance,
            zone=a.zone, host=a.host, port=a.port, url_full="", method=ctx.head.method, resend_count=a.n,
            start_ns=self.clock_ns())
        record.lb = a.lb
        if a.n:
            record.backoff_s = ctx.backoff_s
        rec.attempts.append(record)
        request = self._upstream_request(ctx, a)
        a.start = self.monotonic()
        pool = ctx.target.pool
        if a.endpoint is not None:
            pool.acquire(a.endpoint)
        try:
            t = route.timeouts
            try:
                response = await self.forwarder.send(
                    route.upstream, request, ctx.client_body.__aiter__() if ctx.client_body else None, t.connect_s,
                    a.response_s, t.idle_s, record)
            except UpstreamFailure as failure:
                return await self._send_failed(ctx, a, failure)
            record.status = response.status
            record.peer_address, record.peer_port = response.peer_address, response.peer_port
            a.result = classify(response.status, False)
            cfg = route.retries
            if cfg.attempts > 1 and "status" in cfg.retry_on and response.status in cfg.statuses:
                record.error_type, record.outcome = ErrorType.STATUS_5XX.value, Outcome.UPSTREAM_ERROR.value
                record.end_ns, record.duration_s = self.clock_ns(), self.monotonic() - a.start
                return Failed(ErrorType.STATUS_5XX, response.status, response)
            if not await self.respond(ctx, a, response):
                a.result = Result.GATEWAY_ERROR
            return None
        finally:
            # The attempt ends here; what the pool does with its result (an ejection, its events) is not its time.
            record.end_ns = record.end_ns or self.clock_ns()
            record.duration_s = record.duration_s or (self.monotonic() - a.start)
            if a.endpoint is not None:
                pool.release(a.endpoint)
                if pool.passive_health:
                    pool.observe(a.endpoint.id, a.result, f"{rec.trace.trace_id:032x}", f"{record.span_id:016x}")

    def _upstream_request(self, ctx: RequestContext, a: AttemptContext) -> UpstreamRequest:
        head, rec = ctx.head, ctx.rec
        hostport = _hostport(a.host, a.port)
        a.record.url_full = f"{a.scheme}://{hostport}{ctx.upstream_target}"
        headers = hdr.upstream_request_headers(
            head.headers, client_address=head.client_address, scheme=head.scheme, host=head.header("host"),
            upstream_host=hostport, preserve_host=ctx.route.preserve_host,
            trust_forwarded=ctx.listener.trust_forwarded_headers, request_id=rec.request_id,
            traceparent=format_traceparent(rec.trace.trace_id, a.record.span_id, rec.trace.sampled),
            tracestate=rec.trace.tracestate, version=head.version,
            keep_baggage=rec.trace.treatment == "continued", index=head.index)
        req = ctx.policy
        if req is not None and (req.upstream_set or req.upstream_remove):
            headers = hdr.apply_changes(headers, req.upstream_set, req.upstream_remove)
        return UpstreamRequest(head.method, a.host, a.port, a.scheme, ctx.upstream_target, headers, head.has_body)

    async def _send_failed(self, ctx: RequestContext, a: AttemptContext, failure: UpstreamFailure) -> Failed | None:
        """An attempt that got no response. The client's own body may be why: it stalled (408), a size policy
        cut it mid-stream (413, then close: the rest of the upload may still be arriving) or the client left."""
        body, record = ctx.client_body, a.record
        if body is not None and body.timed_out:
            record.error_type, record.outcome = ErrorType.CLIENT_TIMEOUT.value, Outcome.CLIENT_TIMEOUT.value
            await self._fail(ctx, Outcome.CLIENT_TIMEOUT, ErrorType.CLIENT_TIMEOUT.value)
            return None
        if body is not None and body.too_large is not None:
            recording.late_size_refusal(ctx.rec, body.too_large, self.clock_ns())
            record.outcome = ctx.rec.outcome = Outcome.PAYLOAD_TOO_LARGE.value
            ctx.down.close_after_response()
            await self._answer(ctx, Outcome.PAYLOAD_TOO_LARGE, 413, (), None)
            return None
        if body is not None and body.client_gone:
            raise ClientGone() from None
        outcome = FAILURE_OUTCOME.get(failure.error_type, Outcome.UPSTREAM_ERROR)
        record.error_type, record.outcome = failure.error_type.value, outcome.value
        a.result = Result.GATEWAY_ERROR
        return Failed(failure.error_type)

    # --- RESPONSE ---

    async def respond(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse) -> bool:
        """Relay the response head and stream its body. False when the upstream failed mid-body (the client
        connection is aborted so the truncated body cannot look complete)."""
        rec, down, record = ctx.rec, ctx.down, a.record
        headers, length = hdr.downstream_response_headers(response.headers, rec.protocol_version)
        headers.append(("X-Request-Id", rec.request_id))
        headers.extend(ctx.response_headers)
        if self._trace_response(ctx):
            headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))
        rec.status = response.status
        record.error_type = record.outcome = None
        try:
            if length is not None and (whole := response.whole) is not None and length == len(whole):
                # The whole body came with the head (a small response): one write, nothing to stream.
                await down.respond(response.status, response.reason, tuple(headers), whole)
            else:
                await down.start(response.status, response.reason, tuple(headers), length)
                async for chunk in response.body():
                    await down.write(chunk)
                await down.finish()
        except UpstreamFailure as failure:
            response.close()
            down.abort()
            outcome = FAILURE_OUTCOME.get(failure.error_type, Outcome.UPSTREAM_ERROR)
            record.error_type, record.outcome = failure.error_type.value, outcome.value
            rec.outcome, rec.error_type = outcome.value, failure.error_type.value
            return False
        except ClientGone:
            response.close()
            record.outcome = CLIENT_ABORT
            raise
        finally:
            record.end_ns = self.clock_ns()
            record.duration_s = self.monotonic() - a.start
        response.close()
        record.outcome = rec.outcome = PROXIED
        return True

    def _trace_response(self, ctx: RequestContext) -> bool:
        return self.telemetry_enabled and ctx.rec.trace.sampled and ctx.listener.trace_response_header

    # --- LOG ---

    def record(self, ctx: RequestContext) -> None:
        rec = ctx.rec
        rec.end_ns = self.clock_ns()
        rec.duration_s = self.monotonic() - rec.start_mono
        self.telemetry.finish(rec)

    # --- local answers ---

    def reject(self, listener: str, peer: tuple[str, int], sock: tuple[str, int], status: int,
               reason: str) -> tuple[bytes, str]:
        """A request the listener could not parse (framing conflict, oversize head, bad syntax): record it
        like any other request (outcome `bad_request`, `error.type` = the parser's reason) and return the JSON
        body to answer with (`io.interfaces.Rejecter`). The listener owns the bytes on the wire."""
        trace = start_trace(None, None, None, "ignore", self.sampling_ratio, self.rng)
        now_ns, now = self.clock_ns(), self.monotonic()
        rec = RequestRecord(
            layer=self.layer_value, trace=trace, start_ns=now_ns, start_mono=now, method="_OTHER", path="",
            query="", scheme="http", host=sock[0], server_port=sock[1], client_address=peer[0],
            client_port=peer[1], protocol_version="1.1", user_agent=None, request_id=hdr.request_id(None, self.rng),
            listener=listener, outcome=Outcome.BAD_REQUEST.value, status=status, error_type=reason,
            end_ns=now_ns)
        self.telemetry.finish(rec)
        return error_body(Outcome.BAD_REQUEST, status, rec.request_id, rec.layer), rec.request_id

    async def _fail(self, ctx: RequestContext, outcome: Outcome, error_type: str | None) -> None:
        ctx.rec.error_type = error_type
        await self._answer(ctx, outcome, OUTCOME_STATUS[outcome], (), None)

    async def _answer(self, ctx: RequestContext, outcome: Outcome, status: int,
                      extra: tuple[tuple[str, str], ...], message: str | None) -> None:
        """Answer locally: a small JSON body naming the outcome (none for 204/304), or, when the response head
        is already out, a broken connection (the only honest signal left)."""
        rec, down = ctx.rec, ctx.down
        rec.outcome = outcome.value
        if down.started:
            down.abort()
            return
        rec.status = status
        payload = b"" if status in (204, 304) else error_body(outcome, status, rec.request_id, rec.layer, message)
        headers = [("X-Request-Id", rec.request_id), ("Cache-Control", "no-store"), *extra]
        if payload:
            headers.insert(0, ("Content-Type", "application/json"))
        if self._trace_response(ctx):
            headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))
        await down.respond(status, None, tuple(headers), payload)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

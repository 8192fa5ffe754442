"""The engine: the only code that sequences a request's phases, loops and catches. Both tiers run it.

    ROUTE → POLICY → PICK → UPSTREAM → RESPONSE → LOG

Each phase is a method over the request's `RequestContext` (and, per attempt, an `AttemptContext`):
- `route(ctx)`     canonical path, `Router.match` (pure). Returns the outcome to answer (400, 404) or None.
                   A route with `upstreams` chooses its side here (`proxy.split`, pure): `ctx.target` is the side's.
- `policy(ctx)`    the route's policies in declared order; the first blocking verdict is answered locally.
                   Returns whether the request goes on. Every evaluated policy learns the result at the end.
- `_cached(ctx)`   a route with a response cache (`proxy.cache`), after POLICY: a stored response answers (on the
                   synchronous path too: `_cache_now`), a concurrent fetch of the key is waited for, or the request
                   goes on with the cache's `Flow` in `ctx.cache`, which sees the upstream's answer and stores it.
- `forward(ctx)`   the attempt loop: `pick` → `attempt` → on a failure the client has not seen, `retry` weighs
                   another try (`balancer.retry`: method, what reached the upstream, retry_on, attempts, deadline,
                   budget).
                   A route with `mirror` decides its copy when the books open (`_forward_begin`,
                   `proxy.mirror`): the shadow runs on its own and is compared once the request has ended.
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
import dataclasses
import logging
import random
import time
from typing import AsyncIterator, Awaitable, Callable, NamedTuple

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.balancer.context import PickContext, PickResult
from gatewatch.balancer.health import Result, classify
from gatewatch.balancer.retry import Body, Failure, RetryState, failure_of
from gatewatch.edge.paths import InvalidPath, canonical_path, split_target, strip_prefix, target_authority
from gatewatch.edge.policies import json_transform
from gatewatch.edge.policies.base import PolicyRequest
from gatewatch.edge.routing import NoRoute
from gatewatch.io.interfaces import (ClientGone, Downstream, Forwarder, RequestHead, UpstreamFailure, UpstreamRequest,
                                     UpstreamResponse, header_index)
from gatewatch.io.websocket import Sessions, is_websocket, response_problem
from gatewatch.proxy import headers as hdr
from gatewatch.proxy import aggregate, recording, request_keys
from gatewatch.proxy import grpc
from gatewatch.proxy.answers import CONNECT_STEP, FAILURE_OUTCOME, MESSAGES, error_body
from gatewatch.proxy.cache import CONDITIONALS, Caches, Discard, Flow, StoredResponse
from gatewatch.proxy.context import AttemptContext, ClientBody, RequestContext
from gatewatch.proxy.plan import RoutePlan, Target
from gatewatch.proxy.mirror import MIRROR_HEADER, Mirrors
from gatewatch.proxy.snapshot import Snapshot
from gatewatch.telemetry.context import (AttemptRecord, RequestRecord, format_traceparent, hex64, hex128, new_span_id,
                                         start_trace)
from gatewatch.telemetry.names import OUTCOME_STATUS, Attr, ErrorType, HeaderDrop, Layer, Outcome, Reason, RejectReason
from gatewatch.telemetry.recorder import Telemetry

log = logging.getLogger("gatewatch.engine")

# Plain-str values of the closed vocabularies used on every request (records hold plain strings: they cross a
# pipe to the exporter process, and an Enum attribute lookup costs more than the rest of the bookkeeping).
PROXIED = Outcome.PROXIED.value
CLIENT_ABORT = Outcome.CLIENT_ABORT.value
BALANCER = Layer.BALANCER.value
EDGE = Layer.EDGE  # compared with `Engine.layer` on every pick
PICK_OVERFLOW = Reason.PICK_OVERFLOW.value


class Failed(NamedTuple):
    """An attempt that failed before the client saw anything."""

    error_type: ErrorType
    status: int | None = None  # a retryable status the instance answered
    response: UpstreamResponse | None = None  # that answer, unread: relayed as it is if no retry may follow
    message: str | None = None  # for the client's answer if nothing follows, when the outcome's own is too vague


class Engine:
    # Fixed fields (an extension type when compiled: engine.pxd): `self.x` is a struct read on every request.
    __slots__ = ("snapshot", "layer", "layer_value", "_forwarder", "_send_now", "telemetry", "clock_ns", "monotonic",
                 "rng", "sampling_ratio", "parent_based", "telemetry_enabled", "_tasks", "caches", "_split_requests",
                 "mirrors", "websockets")

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
        self._tasks: set[asyncio.Task] = set()  # requests the synchronous path handed to a task
        self.caches = Caches(telemetry.metrics)  # routes' response caches: live across reloads, like this engine
        self._split_requests = telemetry.metrics.split_requests
        self.mirrors = Mirrors(self)  # shadow requests (issue 19): live across reloads, like this engine
        self.websockets = Sessions(telemetry, clock_ns, self.rng)  # open WebSocket sessions (issue 17)

    @property
    def forwarder(self) -> Forwarder:
        return self._forwarder

    @forwarder.setter
    def forwarder(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder
        self._send_now = getattr(forwarder, "send_now", None)  # its synchronous send, if it has one

    async def handle(self, head: RequestHead, body: AsyncIterator[bytes], down: Downstream) -> None:
        """The listener's entry point (`io.interfaces.RequestHandler`): one parsed request, answered."""
        ctx = RequestContext(self.snapshot, head, body, down, self._new_record(self.snapshot, head),
                             self.snapshot.listeners[head.listener])
        await self._settle(ctx, self._phases(ctx))

    @cython.locals(ctx=RequestContext)
    def handle_now(self, head: RequestHead, down: Downstream) -> None:
        """The synchronous entry (`io.interfaces.SyncRequestHandler`) for a request whose body is complete (none,
        in HTTP/1.1) on a listener whose `down` answers with `respond_now`. The common exchange runs to the
        upstream write here and is settled by the forwarder's callback (`_upstream_answered`) with no task,
        future or coroutine; policies, waits for a connection, retries and streamed bodies continue in a task
        on the very same phase methods. Never raises; calls `down.done()` once, when the request is settled."""
        snap = self.snapshot  # the request keeps the snapshot it started with
        ctx = RequestContext(snap, head, None, down, self._new_record(snap, head), snap.listeners[head.listener])
        try:
            outcome = self.route(ctx)
            if outcome is not None:
                self._fail_now(ctx, outcome, ctx.rec.error_type)
            elif ctx.target.policies or ctx.target.aggregate is not None:
                self._later(ctx, self._policed(ctx))
                return
            elif ctx.plan.cache is not None:
                if not self._cache_now(ctx):
                    return
            elif not self._forward_now(ctx):
                return
        except ClientGone:
            self._client_gone(ctx)
        except Exception:
            log.exception("request %s: internal error", ctx.rec.request_id)
            self._internal_error_now(ctx)
        self._end(ctx)

    async def _phases(self, ctx: RequestContext) -> None:
        outcome = self.route(ctx)
        if outcome is not None:
            await self._fail(ctx, outcome, ctx.rec.error_type)
        else:
            await self._policed(ctx)

    async def _policed(self, ctx: RequestContext) -> None:
        """POLICY, then PICK → UPSTREAM if the policies let the request through."""
        if not ctx.target.policies or await self.policy(ctx):
            if ctx.target.aggregate is not None:  # several calls composed into one answer (proxy.aggregate)
                await aggregate.run(self, ctx)
            elif ctx.plan.cache is None or _websocket(ctx.head) or not await self._cached(ctx):
                await self.forward(ctx)  # (a WebSocket handshake is never answered from, nor stored in, a cache)

    async def _settle(self, ctx: RequestContext, work: Awaitable[None]) -> None:
        """Run what is left of a request; whatever happens, one answer (or an abort) and one record."""
        try:
            await work
        except ClientGone:
            self._client_gone(ctx)
        except Exception:
            log.exception("request %s: internal error", ctx.rec.request_id)
            try:
                await self._fail(ctx, Outcome.INTERNAL_ERROR, ErrorType.INTERNAL.value)
            except ClientGone:
                self._client_gone(ctx)
        finally:
            self._end(ctx)

    def _later(self, ctx: RequestContext, work: Awaitable[None]) -> None:
        """Hand what is left of a request begun on the synchronous path to a task (held until it ends)."""
        task = asyncio.get_running_loop().create_task(self._settle(ctx, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @cython.locals(ctx=RequestContext)
    def _end(self, ctx: RequestContext) -> None:
        """The request is settled: close the balancer's books, let policies learn, LOG, release the listener."""
        if ctx.retries is not None:
            self._forward_end(ctx)
        if ctx.policy is not None:
            self._policies_learn(ctx)
        if ctx.mirror is not None:  # the shadow compares with what the client got (never the other way round)
            self.mirrors.primary_done(ctx)
        if ctx.cache is not None:
            result, reason, age = ctx.cache.finish()
            recording.cache(ctx.rec, result, reason, age, self.clock_ns())
        self.record(ctx)
        ctx.down.done()

    @cython.locals(ctx=RequestContext)
    def _client_gone(self, ctx: RequestContext) -> None:
        ctx.rec.outcome = CLIENT_ABORT
        ctx.rec.error_type = ErrorType.CLIENT_ABORT.value

    @cython.locals(ctx=RequestContext)
    def _internal_error_now(self, ctx: RequestContext) -> None:
        try:
            self._fail_now(ctx, Outcome.INTERNAL_ERROR, ErrorType.INTERNAL.value)
        except ClientGone:
            self._client_gone(ctx)

    @cython.locals(head=RequestHead)
    def _new_record(self, snap: Snapshot, head: RequestHead) -> RequestRecord:
        index = head.index  # (lookups straight in the listener's index: this runs for every request)
        traceparent = index.get("traceparent")
        trust = snap.trace_trust[head.listener]
        if traceparent is None:  # nothing to continue: tracestate and baggage are not propagated (start_trace)
            mode, tracestate, baggage = trust.mode, None, None
        else:
            mode = trust.for_client(head.client_address)
            tracestate = hdr.combined(head.headers, "tracestate", index)
            baggage = hdr.combined(head.headers, "baggage", index)
        trace = start_trace(traceparent, tracestate, baggage, mode, self.sampling_ratio, self.rng, self.parent_based)
        path, query = split_target(head.target)
        return RequestRecord(
            layer=self.layer_value, trace=trace, start_ns=self.clock_ns(), start_mono=self.monotonic(),
            method=head.method, path=path, query=query, scheme=head.scheme,
            host=(target_authority(head.target) or index.get("host") or head.server_address),
            server_port=head.server_port,
            client_address=head.client_address, client_port=head.client_port, protocol_version=head.version,
            user_agent=index.get("user-agent"), request_id=hdr.request_id(index.get("x-request-id"), self.rng),
            listener=head.listener, config_version=snap.config_version, headers_dropped=trace.cut,
            tls=head.tls.span if head.tls is not None else None)

    # --- ROUTE, POLICY ---

    @cython.locals(ctx=RequestContext, rec=RequestRecord, plan=RoutePlan, target=Target)
    def route(self, ctx: RequestContext) -> Outcome | None:
        """Canonical path (what routing sees is exactly what the upstream gets) and header names, by the listener's
        rules, then the first matching route. A refusal is answered 400 with its `error.type` (docs/refusals.md)."""
        rec, rules = ctx.rec, ctx.listener
        try:
            ctx.path = rec.path = canonical_path(rec.path, rules)
            if "#" in ctx.head.target:  # RFC 9112 §3.2: never sent; cut, the upstream would see another target
                raise InvalidPath(RejectReason.FRAGMENT_IN_TARGET, "the request target has a fragment")
        except InvalidPath as err:
            rec.error_type = err.reason
            return Outcome.BAD_REQUEST
        if rules.headers_with_underscores != "allow" and hdr.has_underscored_name(ctx.head.index):
            if rules.headers_with_underscores == "reject":
                rec.error_type = RejectReason.UNDERSCORE_IN_HEADER_NAME.value
                return Outcome.BAD_REQUEST
            self._drop_underscored(ctx)
        match = ctx.snap.router.match(ctx.path, rec.host, ctx.head.method, ctx.head.index, rec.query)
        if isinstance(match, NoRoute):
            recording.route(rec, match, None, self.clock_ns())
            return Outcome.NO_ROUTE
        plan = ctx.plan = ctx.snap.plans[match.index]
        recording.route(rec, match, plan, self.clock_ns())
        ctx.route = match.route
        target = ctx.target = ctx.snap.targets[plan.name]
        rec.route, rec.route_template, rec.upstream = plan.name, match.template, plan.upstream
        if target.split is not None:
            self._split(ctx, target.split)
        return None

    @cython.locals(ctx=RequestContext)
    def _split(self, ctx: RequestContext, split) -> None:
        """A route with `upstreams`: the side that takes the request (`proxy.split`, pure), its target from now
        on (retries stay on that side: it is the upstream the request was given to)."""
        rec = ctx.rec
        side, reason, set_cookie = split.choose(ctx.head, rec.query, self.rng)
        ctx.target = side.target
        if set_cookie is not None:
            ctx.response_headers.append(("Set-Cookie", set_cookie))
        recording.split(rec, rec.route, side.name, side.weight, reason, self.clock_ns())
        self._split_requests.inc((rec.route, side.name, reason))

    def _drop_underscored(self, ctx: RequestContext) -> None:
        """`headers_with_underscores: drop`: the header is gone before routing, policies and the upstream see the
        request (a copy of the head: the listener's stays as received)."""
        head = ctx.head
        headers = hdr.without_underscored(head.headers)
        ctx.head = dataclasses.replace(head, headers=headers, index=header_index(headers))
        rec = ctx.rec
        rec.headers_dropped = (rec.headers_dropped or ()) + (HeaderDrop.UNDERSCORE_IN_NAME.value,)

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

    @cython.locals(ctx=RequestContext, rec=RequestRecord, head=RequestHead, plan=RoutePlan, target=Target)
    def _forward_begin(self, ctx: RequestContext) -> None:
        rec, plan, head, target = ctx.rec, ctx.plan, ctx.head, ctx.target
        pool = target.pool
        if pool is not None and self.layer is EDGE:
            # In an edge process the pick is the balancer layer at work: give it its own span so the trace
            # shows both layers. A balancer tier's SERVER span already is the balancer layer.
            rec.balance_span_id = new_span_id(self.rng)
        rec.balance_start_ns = self.clock_ns()
        upstream_target = strip_prefix(ctx.path, plan.strip_prefix) if plan.strip_prefix else ctx.path
        ctx.upstream_target = upstream_target + "?" + rec.query if rec.query else upstream_target
        if target.mirror is not None and not _websocket(head):  # before the body is wrapped: a copy is taken as
            # the primary reads it (never of a WebSocket handshake: a second session nobody reads)
            self.mirrors.begin(ctx, target.mirror)
        if head.has_body:
            ctx.client_body = ClientBody(ctx.body, plan.idle_s)
        ctx.picking = None if pool is None else PickContext(
            pool, request_keys.hash_key(pool.hash_key, head, rec.query) if pool.hash_key else None,
            pool.affinity_target(request_keys.cookie(head, pool.affinity.cookie)) if pool.affinity else None)
        ctx.retries = RetryState(plan.retries, target.budget, self.monotonic(), plan.per_try_s, plan.deadline_s)

    @cython.locals(ctx=RequestContext)
    def _forward_end(self, ctx: RequestContext) -> None:
        ctx.retries.close()
        ctx.retries = None
        ctx.rec.balance_end_ns = self.clock_ns()

    async def forward(self, ctx: RequestContext) -> None:
        """PICK → UPSTREAM, attempt after attempt (the books are closed by `_end`)."""
        self._forward_begin(ctx)
        await self._attempts(ctx)

    async def _attempts(self, ctx: RequestContext, current: Awaitable[Failed | None] | None = None,
                        failed: Failed | None = None) -> None:
        """The attempt loop from wherever the request stands: an attempt under way (`current`), one that just
        failed before the client saw anything (`failed`), or neither (pick the first)."""
        while True:
            if current is not None:
                try:
                    failed = await current
                finally:
                    ctx.retries.attempt_ended(ctx.attempt.n)
                current = None
                if failed is None:
                    return
            if failed is not None:
                if not await self.retry(ctx, ctx.attempt, failed):
                    return
                failed = None
            a = self._next_attempt(ctx)
            if not isinstance(a, AttemptContext):  # (an Outcome; an extension type's check is a C test)
                await self._fail(ctx, a, None)
                return
            current = self.attempt(ctx, a)

    @cython.locals(ctx=RequestContext, previous=AttemptContext)
    def _next_attempt(self, ctx: RequestContext) -> AttemptContext | Outcome:
        """The next attempt's pick (a failover recorded when it moves to another instance). An Outcome when no
        instance can take it."""
        previous = ctx.attempt
        n = 0 if previous is None else previous.n + 1
        a = self.pick(ctx, ctx.picking, n)
        if not isinstance(a, AttemptContext):  # (an Outcome; an extension type's check is a C test)
            ctx.retries.attempt_ended(n)
            return a
        if n and ctx.picking is not None and previous.instance != a.instance:
            recording.failover(ctx.rec, ctx.target.pool.name, previous.instance, a.instance, self.clock_ns())
        a.response_s = ctx.retries.attempt_timeout(self.monotonic())
        if "grpc-timeout" in ctx.head.index:  # the client's deadline (gRPC PROTOCOL-HTTP2.md), if it is sooner
            deadline = grpc.parse_timeout(ctx.head.index["grpc-timeout"])
            if deadline is not None:
                a.response_s = max(0.001, min(a.response_s, ctx.rec.start_mono + deadline - self.monotonic()))
        ctx.attempt = a
        return a

    @cython.locals(ctx=RequestContext, picking=PickContext, p=PickResult)
    def pick(self, ctx: RequestContext, picking: PickContext | None, n: int) -> AttemptContext | Outcome:
        """Where attempt `n` goes: the pool's pick (recorded), or the URL upstream. An Outcome when no
        instance can take it."""
        if picking is None:
            remote = ctx.target.remote
            return AttemptContext(n, remote.host, remote.port, remote.scheme, remote.instance, None,
                                  self.layer_value, None, {})
        p = picking.pick(self.rng)
        detail = self.telemetry.exports_allowed_decisions(ctx.rec.trace.sampled)  # (else counts only: recording.pick)
        lb = recording.pick(ctx.rec, p, self.clock_ns(), detail)
        ep = p.endpoint
        if ep is None:
            return Outcome.UPSTREAM_OVERFLOW if p.reason == PICK_OVERFLOW else Outcome.NO_HEALTHY_UPSTREAM
        picking.repin(ctx.response_headers, ep)
        return AttemptContext(n, ep.host, ep.port, ctx.target.pool.scheme, ep.id, ep.zone, BALANCER, ep, lb)

    async def retry(self, ctx: RequestContext, a: AttemptContext, failed: Failed) -> bool:
        """After a failed attempt the client has not seen: True to try again (after the backoff), False once the
        request is settled (the failure answered, or a retryable status nobody may retry relayed as it is)."""
        error_type, status, response, message = failed
        if _websocket(ctx.head) and error_type not in NOT_SENT:  # the upstream may have the handshake: never twice
            await self._fail(ctx, FAILURE_OUTCOME.get(error_type, Outcome.UPSTREAM_ERROR), error_type.value, message)
            return False
        kind = Failure.STATUS if status is not None else failure_of(error_type)
        if ctx.picking is not None:
            ctx.picking.tried(a.instance)
        body = Body.NONE if ctx.client_body is None else ctx.client_body.state()
        retries = ctx.retries
        verdict, budget_left = retries.decide(ctx.head.method, kind, a.n + 1, body, self.monotonic())
        if ctx.plan.retry_attempts > 1:
            recording.retry(ctx.rec, ctx.plan.name, verdict, a.n + 1, budget_left, a.instance, kind,
                            self.clock_ns(), error_type.value)
        if not verdict.retry:
            if response is not None:
                await self.respond(ctx, a, response)
            else:
                await self._fail(ctx, FAILURE_OUTCOME.get(error_type, Outcome.UPSTREAM_ERROR), error_type.value,
                                 message)
            return False
        if response is not None:
            response.close()
        pause = retries.pause(a.n + 1, self.rng, self.monotonic())
        started = self.monotonic()
        if pause:
            await asyncio.sleep(pause)
        ctx.backoff_s = self.monotonic() - started  # the time it really took, not the plan
        return True

    # --- one attempt ---

    async def attempt(self, ctx: RequestContext, a: AttemptContext) -> Failed | None:
        """One attempt. None when the request is settled (relayed, answered, aborted); a `Failed` when it failed
        before the client saw anything (with the response still unread for a retryable status)."""
        request = self._attempt_begin(ctx, a)
        try:
            return await self._exchange(ctx, a, request)
        finally:
            self._attempt_end(ctx, a)

    async def _attempt_tail(self, ctx: RequestContext, a: AttemptContext,
                            step: Awaitable[Failed | None]) -> Failed | None:
        """The rest of an attempt begun on the synchronous path, ended like `attempt` ends one."""
        try:
            return await step
        finally:
            self._attempt_end(ctx, a)

    @cython.locals(ctx=RequestContext, a=AttemptContext, record=AttemptRecord)
    def _attempt_begin(self, ctx: RequestContext, a: AttemptContext) -> UpstreamRequest:
        record = a.record = AttemptRecord(
            span_id=new_span_id(self.rng), layer=a.layer, upstream=ctx.target.upstream, instance=a.instance,
            zone=a.zone, host=a.host, port=a.port, url_full="", method=ctx.head.method, resend_count=a.n,
            start_ns=self.clock_ns())
        record.lb = a.lb
        if a.n:
            record.backoff_s = ctx.backoff_s
        ctx.rec.attempts.append(record)
        request = self._upstream_request(ctx, a)
        a.start = self.monotonic()
        if a.endpoint is not None:
            ctx.target.pool.acquire(a.endpoint)
        return request

    @cython.locals(ctx=RequestContext, a=AttemptContext, rec=RequestRecord, record=AttemptRecord)
    def _attempt_end(self, ctx: RequestContext, a: AttemptContext) -> None:
        """The attempt ends here; what the pool does with its result (an ejection, its events) is not its time."""
        if a.ended:
            return
        a.ended = True
        record = a.record
        record.end_ns = record.end_ns or self.clock_ns()
        record.duration_s = record.duration_s or (self.monotonic() - a.start)
        if a.endpoint is not None:
            pool = ctx.target.pool
            pool.release(a.endpoint)
            if pool.passive_health:
                pool.observe(a.endpoint.id, a.result, hex128(ctx.rec.trace.trace_id), hex64(record.span_id))

    async def _exchange(self, ctx: RequestContext, a: AttemptContext, request: UpstreamRequest) -> Failed | None:
        plan = ctx.plan
        try:
            response = await self._forwarder.send(
                ctx.target.upstream, request, ctx.client_body.__aiter__() if ctx.client_body else None,
                plan.connect_s, a.response_s, plan.idle_s, a.record)
        except UpstreamFailure as failure:
            return await self._send_failed(ctx, a, failure)
        failed = self._answered(ctx, a, response)
        if failed is None:
            if _websocket(ctx.head) and (response.status == 101 or (
                    ctx.head.version == "2" and 200 <= response.status < 300)):
                await self._websocket(ctx, a, response)  # (RFC 8441 §5: a 2xx on the stream opens the session)
            else:
                await self._relay(ctx, a, response, None)
        return failed

    async def _websocket(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse) -> None:
        """A 101 to a WebSocket upgrade: checked as RFC 6455 §4.2.2 asks (else 502 `websocket_handshake_failed`),
        relayed, and both connections handed to a relay session (`io.websocket`). The request's record ends
        here, at the 101 (its SERVER span); the session has a span of its own, a child of it."""
        rec, record = ctx.rec, a.record
        problem = response_problem(response.headers, ctx.head.header("sec-websocket-key") or "") \
            if response.status == 101 else f"the upstream answered {response.status}, not 101, to the upgrade"
        detach, upgrade = getattr(response, "detach", None), getattr(ctx.down, "upgrade", None)
        if problem is not None or detach is None or upgrade is None:
            response.close()
            a.result = Result.GATEWAY_ERROR
            failure = ErrorType.WEBSOCKET_HANDSHAKE_FAILED.value
            record.error_type, record.outcome = failure, Outcome.UPSTREAM_ERROR.value
            self._attempt_clock(a)
            await self._fail(ctx, Outcome.UPSTREAM_ERROR, failure, problem or "this data plane cannot relay WebSocket")
            return
        headers, _ = self._response_head(ctx, response)  # hop-by-hop gone: the upgrade's own put back
        upstream, leftover = detach()
        try:
            client, early = upgrade((("Connection", "Upgrade"), ("Upgrade", "websocket")) + headers)
        except ClientGone:
            upstream.abort()
            record.outcome = CLIENT_ABORT
            raise
        finally:
            self._attempt_clock(a)
        rec.status = 101
        record.outcome = rec.outcome = PROXIED
        self.websockets.begin(ctx, a, client, early, upstream, leftover)

    @cython.locals(ctx=RequestContext, a=AttemptContext, record=AttemptRecord)
    def _answered(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse) -> Failed | None:
        """The response head is in: a `Failed` if its status is one to retry, else None (relay it)."""
        record = a.record
        record.status = response.status
        record.peer_address, record.peer_port = response.peer_address, response.peer_port
        a.result = classify(response.status, False)
        # (a status to retry on; a WebSocket handshake is never sent twice)
        if response.status in ctx.plan.retry_statuses and not _websocket(ctx.head):
            record.error_type, record.outcome = ErrorType.STATUS_5XX.value, Outcome.UPSTREAM_ERROR.value
            self._attempt_clock(a)
            return Failed(ErrorType.STATUS_5XX, response.status, response)
        return None

    async def _relay(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse,
                     head: tuple[tuple[tuple[str, str], ...], int | None] | None) -> None:
        if not await self.respond(ctx, a, response, head):
            a.result = Result.GATEWAY_ERROR

    # --- the synchronous path: the same phases, called from the listener's and the forwarder's callbacks ---

    @cython.locals(ctx=RequestContext)
    def _forward_now(self, ctx: RequestContext) -> bool:
        """PICK → UPSTREAM for the first attempt: written to an idle pooled connection with the forwarder's
        callback to come (`send_now`), or, when there is none, continued in a task. True when the request was
        settled here instead (no instance could take it)."""
        self._forward_begin(ctx)
        a = self._next_attempt(ctx)
        if not isinstance(a, AttemptContext):  # (an Outcome; an extension type's check is a C test)
            self._fail_now(ctx, a, None)
            return True
        request = self._attempt_begin(ctx, a)
        try:
            sent = self._send_now is not None and self._send_now(
                ctx.target.upstream, request, a.response_s, ctx.plan.idle_s, a.record, self._upstream_answered, ctx)
        except BaseException:
            self._attempt_over(ctx, a)
            raise
        if not sent:
            self._continue(ctx, a, self._exchange(ctx, a, request))
        return False

    def _continue(self, ctx: RequestContext, a: AttemptContext, step: Awaitable[Failed | None]) -> None:
        """The rest of attempt `a`, and any attempts after it, in a task."""
        self._later(ctx, self._attempts(ctx, self._attempt_tail(ctx, a, step)))

    @cython.locals(ctx=RequestContext, a=AttemptContext)
    def _attempt_over(self, ctx: RequestContext, a: AttemptContext) -> None:
        """Attempt `a` ended on the synchronous path: booked in the pool and in the retry state, once."""
        if not a.ended:
            self._attempt_end(ctx, a)
            ctx.retries.attempt_ended(a.n)

    @cython.locals(ctx=RequestContext, a=AttemptContext)
    def _upstream_answered(self, ctx: RequestContext, result: UpstreamResponse | UpstreamFailure) -> None:
        """The forwarder's callback for an attempt sent with `send_now`: its response (the head, and the body if
        it came along) or its failure. Relays a whole small response now; hands anything else to a task."""
        a = ctx.attempt
        try:
            if isinstance(result, UpstreamFailure):
                self._continue(ctx, a, self._send_failed(ctx, a, result))
                return
            failed = self._answered(ctx, a, result)
            if failed is not None:
                self._attempt_over(ctx, a)
                self._later(ctx, self._attempts(ctx, None, failed))
                return
            if ctx.cache is not None:  # stored, freshened (a 304 answers with the entry) or stale-if-error
                result = ctx.cache.response(result, self.clock_ns() / 1e9)
            elif (block := getattr(result, "head_block", None)) is not None and self._relay_block_now(
                    ctx, a, result, block):
                self._attempt_over(ctx, a)
                self._end(ctx)
                return
            head = self._response_head(ctx, result)
            whole = _whole(result, head[1])
            if whole is None:  # a body still arriving: streamed by the task
                self._continue(ctx, a, self._relay(ctx, a, result, head))
                return
            self._respond_now(ctx, a, result, head[0], whole)
        except ClientGone:
            self._client_gone(ctx)
        except Exception:
            log.exception("request %s: internal error", ctx.rec.request_id)
            self._internal_error_now(ctx)
        self._attempt_over(ctx, a)
        self._end(ctx)

    @cython.locals(ctx=RequestContext, a=AttemptContext, rec=RequestRecord, record=AttemptRecord, head=RequestHead)
    def _upstream_request(self, ctx: RequestContext, a: AttemptContext) -> UpstreamRequest:
        head, rec = ctx.head, ctx.rec
        hostport = _hostport(a.host, a.port)
        a.record.url_full = f"{a.scheme}://{hostport}{ctx.upstream_target}"
        headers = hdr.upstream_request_headers(  # (by position: see there)
            head.headers, head.client_address, head.scheme, head.header("host"), hostport, ctx.plan.preserve_host,
            ctx.listener.trust_forwarded_headers, rec.request_id,
            format_traceparent(rec.trace.trace_id, a.record.span_id, rec.trace.sampled), rec.trace.tracestate,
            head.version, rec.trace.baggage, head.index)
        tls = ctx.listener.tls
        if tls is not None and tls.client_cert_header:
            # the verified client identity, under the listener's header name; never a client's copy of it
            forwarded = head.tls.forwarded if head.tls is not None else None
            headers = hdr.apply_changes(headers, [(tls.client_cert_header, forwarded)] if forwarded else [],
                                        {tls.client_cert_header.lower()})
        req = ctx.policy
        if req is not None and (req.upstream_set or req.upstream_remove):
            headers = hdr.apply_changes(headers, req.upstream_set, req.upstream_remove)
        if "grpc-timeout" in head.index:  # what is left of the client's deadline goes on (gRPC PROTOCOL-HTTP2.md)
            headers = grpc.propagate_timeout(headers, head.index["grpc-timeout"], rec.start_mono, self.monotonic())
        if MIRROR_HEADER in head.index:  # only Gatewatch marks a shadow copy: a backend may skip side effects on it
            headers = tuple(hdr.without(headers, {MIRROR_HEADER}))
        if ctx.cache is not None:  # revalidating a stored response: its validators (RFC 9111 §4.3.1)
            headers = ctx.cache.upstream_headers(headers)
        if _websocket(head):  # hop-by-hop, kept for a WebSocket upgrade the listener validated (RFC 6455 §4.1)
            return UpstreamRequest(head.method, a.host, a.port, a.scheme, ctx.upstream_target,
                                   headers + (("Connection", "Upgrade"), ("Upgrade", "websocket")), False,
                                   "websocket")
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
        if failure.tls_failure is not None:  # say which check failed, never just "could not connect"
            record.tls_failure = failure.tls_failure
            return Failed(failure.error_type, message=failure.detail)
        return Failed(failure.error_type, message=CONNECT_STEP.get(failure.error_type))  # DNS, refused, ...

    # --- RESPONSE ---

    @cython.locals(ctx=RequestContext, rec=RequestRecord, record=AttemptRecord)
    def _response_head(self, ctx: RequestContext,
                       response: UpstreamResponse) -> tuple[tuple[tuple[str, str], ...], int | None]:
        """The client's response head from the upstream's: (headers, the body's length if it declares one)."""
        headers, length = hdr.downstream_response_headers(response.headers, ctx.rec.protocol_version)
        req = ctx.policy
        if req is not None and req.response_remove:  # the upstream's own headers, never ours below
            headers = hdr.without(headers, req.response_remove)
        self._response_tail(ctx, headers)
        return tuple(headers), length

    @cython.locals(ctx=RequestContext, rec=RequestRecord)
    def _response_tail(self, ctx: RequestContext, headers: list) -> None:
        """What this proxy adds after the upstream's headers: the request's id, the route's own (an affinity
        cookie, a split's), traceresponse."""
        rec = ctx.rec
        headers.append(("X-Request-Id", rec.request_id))
        headers.extend(ctx.response_headers)
        if self._trace_response(ctx):
            headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))

    @cython.locals(ctx=RequestContext, a=AttemptContext, tail=list)
    def _relay_block_now(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse,
                         block: bytes) -> bool:
        """The upstream's header lines written to the client as they came (`block`, its `head_block`: the lines
        `_response_head` would drop are already out of it), then Via and the tail: the same bytes `_response_head`
        and `respond_now` write, without splitting and joining them again. False when the body is not all here
        or the route removes response headers: the caller serializes."""
        whole = response.whole
        req = ctx.policy
        if whole is None or (req is not None and req.response_remove):
            return False
        tail = [("Via", hdr.via_hop(ctx.rec.protocol_version))]  # (ours, as downstream_response_headers adds it)
        self._response_tail(ctx, tail)
        self._respond_now(ctx, a, response, tail, whole, block)
        return True

    async def respond(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse,
                      head: tuple[tuple[tuple[str, str], ...], int | None] | None = None) -> bool:
        """Relay the response head and stream its body. False when the upstream failed mid-body (the client
        connection is aborted so the truncated body cannot look complete)."""
        rec, down, record = ctx.rec, ctx.down, a.record
        if ctx.cache is not None and head is None:  # stored as it streams, freshened, or stale-if-error
            response = ctx.cache.response(response, self.clock_ns() / 1e9)
        headers, length = head or self._response_head(ctx, response)
        rec.status = response.status
        record.error_type = record.outcome = None
        try:
            req = ctx.policy
            if req is not None and req.state and json_transform.RESPONSE in req.state:  # response body edits
                response, headers, length = await json_transform.response(ctx, response, headers, length,
                                                                          self.clock_ns)
            whole = _whole(response, length)
            if whole is not None:  # the whole body came with the head (a small response): one write
                await down.respond(response.status, response.reason, headers, whole)
            else:
                await down.start(response.status, response.reason, headers, length)
                left = grpc.time_left(ctx.head.index, rec.start_mono, self.monotonic())
                if left is None:
                    async for chunk in response.body():
                        await down.write(chunk)
                elif not await _stream_within(response, down, left):
                    await self._deadline_cut(ctx, a, response)
                    return True
                trailers = getattr(response, "trailers", None)  # an HTTP/2 upstream's (gRPC status)
                if grpc.is_grpc(ctx.head.index.get("content-type")):
                    _grpc_outcome(ctx.rec, trailers or response.headers)
                if trailers and hasattr(down, "send_trailers"):
                    await down.send_trailers(trailers)
                else:
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
            self._attempt_clock(a)
        response.close()
        record.outcome = rec.outcome = PROXIED
        return True

    async def _deadline_cut(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse) -> None:
        """The gRPC deadline passed while the response streamed: the upstream stream is cancelled (RST_STREAM
        CANCEL on HTTP/2) and the client's stream ends with trailers grpc-status 4 (PROTOCOL-HTTP2.md: a deadline
        is the whole call's, not only the wait for its head); a downstream without trailers is aborted."""
        response.close()
        trailers = (("grpc-status", str(grpc.DEADLINE_EXCEEDED)),
                    ("grpc-message", grpc.encode_message("deadline exceeded while the response was streaming")))
        rec, record = ctx.rec, a.record
        record.error_type, record.outcome = ErrorType.DEADLINE_EXCEEDED.value, Outcome.UPSTREAM_TIMEOUT.value
        rec.outcome, rec.error_type = Outcome.UPSTREAM_TIMEOUT.value, ErrorType.DEADLINE_EXCEEDED.value
        _grpc_outcome(rec, trailers)
        if hasattr(ctx.down, "send_trailers"):
            await ctx.down.send_trailers(trailers)
        else:
            ctx.down.abort()

    @cython.locals(ctx=RequestContext, a=AttemptContext, rec=RequestRecord, record=AttemptRecord)
    def _respond_now(self, ctx: RequestContext, a: AttemptContext, response: UpstreamResponse,
                     headers: tuple[tuple[str, str], ...], whole: bytes, block: bytes | None = None) -> None:
        """`respond` for a whole body on a downstream that writes synchronously (`respond_now`); with `block`, the
        upstream's header lines as relayed, `headers` after them (`respond_block_now`)."""
        rec, record = ctx.rec, a.record
        rec.status = response.status
        record.error_type = record.outcome = None
        try:
            if block is None:
                ctx.down.respond_now(response.status, response.reason, headers, whole)
            else:
                ctx.down.respond_block_now(response.status, response.reason, block, response.dated, headers, whole)
        except ClientGone:
            record.outcome = CLIENT_ABORT
            raise
        finally:
            self._attempt_clock(a)
            response.close()
        record.outcome = rec.outcome = PROXIED

    @cython.locals(a=AttemptContext)
    def _attempt_clock(self, a: AttemptContext) -> None:
        """The attempt's end, as the client saw it (the pool's bookkeeping after it is not its time)."""
        a.record.end_ns = self.clock_ns()
        a.record.duration_s = self.monotonic() - a.start

    @cython.locals(ctx=RequestContext)
    def _trace_response(self, ctx: RequestContext) -> bool:
        return self.telemetry_enabled and ctx.rec.trace.sampled and ctx.listener.trace_response_header

    # --- the response cache (proxy.cache): a hit answered without the upstream, a miss stored as it is relayed ---

    def _cache_begin(self, ctx: RequestContext) -> Flow:
        rec = ctx.rec
        store = self.caches.store(rec.route, ctx.route.cache)
        flow = ctx.cache = Flow(store, ctx.head, rec.scheme, rec.host, rec.path, rec.query, self.clock_ns() / 1e9)
        return flow.begin()

    def _cache_now(self, ctx: RequestContext) -> bool:
        """The cache's turn on the synchronous path: a hit is answered here; a request another one is already
        fetching waits for it in a task; anything else goes upstream. True when settled here (`_forward_now`)."""
        flow = self._cache_begin(ctx)
        hit = flow.hit
        if hit is not None and ctx.head.method != "HEAD":
            ctx.down.respond_now(hit.status, None, self._stored_head(ctx, hit), hit.whole)
            if flow.swr:
                self._refresh_safely(ctx)
            return True
        if flow.wait is not None or hit is not None or flow.consult:  # a HEAD hit; the shared tier to ask
            self._later(ctx, self._cached_or_forward(ctx))
            return False
        return self._forward_now(ctx)

    async def _cached_or_forward(self, ctx: RequestContext) -> None:
        if not await self._cached(ctx):
            await self.forward(ctx)

    async def _cached(self, ctx: RequestContext) -> bool:
        """The cache's turn on the async path: True when the request was answered from the store (at once, or
        after waiting, at most `coalesce_timeout_s`, for a concurrent request's fetch of the same key)."""
        flow = ctx.cache or self._cache_begin(ctx)
        if flow.consult:  # nothing in-process: the shared tier first
            await flow.consult_shared(self.clock_ns() / 1e9)
        if flow.wait is not None:
            try:
                await asyncio.wait_for(asyncio.shield(flow.wait), ctx.route.cache.coalesce_timeout_s)
            except asyncio.TimeoutError:
                pass
            flow.after_wait(self.clock_ns() / 1e9)
        hit = flow.hit
        if hit is None:
            return False
        ctx.rec.status, ctx.rec.outcome = hit.status, PROXIED
        headers, length = self._response_head(ctx, hit)
        req = ctx.policy
        if req is not None and req.state and json_transform.RESPONSE in req.state:  # as on a relayed response
            hit, headers, length = await json_transform.response(ctx, hit, headers, length, self.clock_ns)
        whole = _whole(hit, length)
        if whole is not None:
            await ctx.down.respond(hit.status, None, headers, whole)
        else:  # a HEAD (the stored length, no body), or a transform's stream
            await ctx.down.start(hit.status, None, headers, length)
            async for chunk in hit.body():
                await ctx.down.write(chunk)
            await ctx.down.finish()
        if flow.swr:
            self._refresh_safely(ctx)
        return True

    def _stored_head(self, ctx: RequestContext, stored: StoredResponse) -> tuple[tuple[str, str], ...]:
        """A stored response's head for this client (its own request id, the policies' headers, Via); the
        request is recorded as `proxied` (the cache result says from where)."""
        ctx.rec.status, ctx.rec.outcome = stored.status, PROXIED
        return self._response_head(ctx, stored)[0]

    def _refresh_safely(self, ctx: RequestContext) -> None:
        """The client has its answer: whatever the refresh does, it must not reach that exchange."""
        try:
            self._refresh(ctx)
        except Exception:
            log.exception("request %s: background cache refresh failed", ctx.rec.request_id)
            ctx.cache.entry.revalidating = False

    def _refresh(self, ctx: RequestContext) -> None:
        """stale-while-revalidate (RFC 5861 §3): the stale answer is out; the entry is revalidated in the
        background, once, as a request of the gateway's own (routed again, no policies: the client's passed) with
        its own record, in the client's trace."""
        head, rec = ctx.head, ctx.rec
        headers = tuple(h for h in head.headers if h[0].lower() not in CONDITIONALS and h[0].lower() not in (
            "traceparent", "tracestate", "cache-control", "pragma")) + (
            ("traceparent", format_traceparent(rec.trace.trace_id, rec.trace.span_id, rec.trace.sampled)),)
        head = dataclasses.replace(head, headers=headers, index=header_index(headers))
        bg = RequestContext(ctx.snap, head, None, Discard(), self._new_record(ctx.snap, head), ctx.listener)
        if self.route(bg) is not None or bg.route.cache != ctx.route.cache:
            ctx.cache.entry.revalidating = False
            return
        bg.cache = Flow(ctx.cache.store, head, rec.scheme, rec.host, rec.path, rec.query,
                        self.clock_ns() / 1e9).refresh(ctx.cache.entry)
        self._later(bg, self.forward(bg))

    # --- LOG ---

    @cython.locals(ctx=RequestContext, rec=RequestRecord)
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

    async def _fail(self, ctx: RequestContext, outcome: Outcome, error_type: str | None,
                    message: str | None = None) -> None:
        ctx.rec.error_type = error_type
        await self._answer(ctx, outcome, OUTCOME_STATUS[outcome], (), message)

    @cython.locals(ctx=RequestContext)
    def _fail_now(self, ctx: RequestContext, outcome: Outcome, error_type: str | None) -> None:
        ctx.rec.error_type = error_type
        answer = self._local_answer(ctx, outcome, OUTCOME_STATUS[outcome], (), None)
        if answer is not None:
            ctx.down.respond_now(answer[0], None, answer[1], answer[2])

    async def _answer(self, ctx: RequestContext, outcome: Outcome, status: int,
                      extra: tuple[tuple[str, str], ...], message: str | None) -> None:
        answer = self._local_answer(ctx, outcome, status, extra, message)
        if answer is not None:
            await ctx.down.respond(answer[0], None, answer[1], answer[2])

    @cython.locals(ctx=RequestContext)
    def _local_answer(self, ctx: RequestContext, outcome: Outcome, status: int, extra: tuple[tuple[str, str], ...],
                      message: str | None) -> tuple[int, tuple[tuple[str, str], ...], bytes] | None:
        """A local answer: a small JSON body naming the outcome (none for 204/304). None when the response head
        is already out: the connection is aborted instead (the only honest signal left)."""
        rec, down = ctx.rec, ctx.down
        if ctx.cache is not None and outcome in STALE_IF_ERROR and not down.started:
            stale = ctx.cache.stale_if_error(self.clock_ns() / 1e9)  # RFC 5861 §4: the stale response instead
            if stale is not None:
                rec.error_type = None
                return stale.status, self._stored_head(ctx, stale), stale.whole
        rec.outcome = outcome.value
        if down.started:
            down.abort()
            return None
        if grpc.is_grpc(ctx.head.index.get("content-type")):  # a real gRPC error: trailers-only, HTTP 200
            rec.status, headers, payload = grpc.local_error(status, message or MESSAGES[outcome],
                                                            (("x-request-id", rec.request_id), *extra))
            _grpc_outcome(rec, headers)
            return 200, headers, payload
        rec.status = status
        payload = b"" if status in (204, 304) else error_body(outcome, status, rec.request_id, rec.layer, message)
        headers = [("X-Request-Id", rec.request_id), ("Cache-Control", "no-store"), *extra]
        if payload:
            headers.insert(0, ("Content-Type", "application/json"))
        if self._trace_response(ctx):
            headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))
        return status, tuple(headers), payload


STALE_IF_ERROR = frozenset({Outcome.UPSTREAM_CONNECT_ERROR, Outcome.UPSTREAM_TLS_ERROR, Outcome.UPSTREAM_TIMEOUT,
                            Outcome.UPSTREAM_ERROR, Outcome.NO_HEALTHY_UPSTREAM, Outcome.UPSTREAM_OVERFLOW})


# the failures of an attempt whose request never reached the upstream (a WebSocket handshake may be retried then)
NOT_SENT = frozenset({ErrorType.DNS_ERROR, ErrorType.CONNECT_REFUSED, ErrorType.CONNECT_ERROR,
                      ErrorType.CONNECT_TIMEOUT, ErrorType.UPSTREAM_TLS_ERROR})


def _websocket(head: RequestHead) -> bool:
    """A WebSocket upgrade (validated by the listener, RFC 6455 §4.1): one dict lookup for any other request."""
    return "upgrade" in head.index and is_websocket(head.index)


async def _stream_within(response: UpstreamResponse, down: Downstream, seconds: float) -> bool:
    """Relay the response body to `down` within `seconds`; False when the time ran out first."""
    limit = asyncio.timeout(seconds)
    try:
        async with limit:
            async for chunk in response.body():
                await down.write(chunk)
    except TimeoutError:
        if not limit.expired():  # not ours
            raise
        return False
    return True


def _grpc_outcome(rec, headers) -> None:
    """rpc.* on the SERVER span (OTel RPC semconv) and a non-OK grpc-status as the request's error.type."""
    code, _ = grpc.status_of(headers)
    attrs = rec.span_attrs = dict(rec.span_attrs or {})
    attrs[Attr.RPC_SYSTEM] = "grpc"
    names = grpc.service_method(rec.path)
    if names is not None:
        attrs[Attr.RPC_SERVICE], attrs[Attr.RPC_METHOD] = names
    if code is not None:
        attrs[Attr.RPC_GRPC_STATUS_CODE] = code
        if code != grpc.OK and rec.error_type is None:
            rec.error_type = f"grpc_{code}"


def _whole(response: UpstreamResponse, length: int | None) -> bytes | None:
    """The response's entire body when it came with the head and matches its declared length, else None."""
    if length is None:
        return None
    whole = response.whole
    return whole if whole is not None and len(whole) == length else None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

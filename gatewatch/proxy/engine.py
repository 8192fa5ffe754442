"""The engine: the only code that sequences a request's phases, loops, and catches.

    ROUTE → POLICY → PICK → UPSTREAM → RESPONSE → LOG

- ROUTE   `Router.match` (pure) → `RouteMatch | NoRoute`; NoRoute answers 404.
- POLICY  the route's policies in declared order (none yet: the edge-policies issue adds them here).
- PICK    the route's target: a pool of this process (`Pool.pick`, the in-process balancer layer, traced as an
          INTERNAL span with `gatewatch.layer=balancer`) or a remote URL (a separate balancer tier).
- UPSTREAM one attempt through the `Forwarder` (retries arrive with the balancer issue; the loop is here).
- RESPONSE relay the head and stream the body; a failure after the head was sent aborts the client
          connection, so a truncated body can never look complete.
- LOG     `Telemetry.finish(record)` exactly once, in `finally`.

Every decision is appended to the request's `RequestRecord` (`edge.decisions` shapes the records); nothing here
calls a tracer or a logger directly.
Guarantee: every request gets exactly one of: a relayed response, a locally generated error response, or an
aborted connection — and exactly one record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import AsyncIterator, Callable

from gatewatch.balancer.algorithms import Endpoint, NoHealthyEndpoint
from gatewatch.balancer.health import Result, classify
from gatewatch.balancer.retry import Body, Failure, RetryBudget, backoff_s, failure_of
from gatewatch.balancer.retry import decide as retry_decide
from gatewatch.proxy import recording as decisions
from gatewatch.proxy import request_keys
from gatewatch.proxy import headers as hdr
from gatewatch.io.interfaces import ClientGone, Downstream, Forwarder, RequestHead, UpstreamFailure, UpstreamRequest
from gatewatch.edge.policies.base import PolicyRequest
from gatewatch.edge.policies.bodies import BodyTooLarge
from gatewatch.edge.paths import InvalidPath, canonical_path, split_target, strip_prefix, target_authority
from gatewatch.edge.routing import NoRoute
from gatewatch.proxy.snapshot import Snapshot
from gatewatch.telemetry.context import AttemptRecord, RequestRecord, format_traceparent, new_span_id, start_trace
from gatewatch.telemetry.names import OUTCOME_STATUS, ErrorType, Exclusion, Layer, Outcome
from gatewatch.telemetry.recorder import Telemetry

log = logging.getLogger("gatewatch.engine")

# Plain-str values of the closed vocabularies used on every request (records hold plain strings: they cross a
# pipe to the exporter process, and an Enum attribute lookup costs more than the rest of the bookkeeping).
PROXIED = Outcome.PROXIED.value
CLIENT_ABORT = Outcome.CLIENT_ABORT.value
BALANCER = Layer.BALANCER.value

FAILURE_OUTCOME = {
    ErrorType.CONNECT_REFUSED: Outcome.UPSTREAM_CONNECT_ERROR,
    ErrorType.CONNECT_TIMEOUT: Outcome.UPSTREAM_TIMEOUT,
    ErrorType.RESPONSE_TIMEOUT: Outcome.UPSTREAM_TIMEOUT,
    ErrorType.READ_TIMEOUT: Outcome.UPSTREAM_TIMEOUT,
    ErrorType.UPSTREAM_RESET: Outcome.UPSTREAM_ERROR,
    ErrorType.PROTOCOL_ERROR: Outcome.UPSTREAM_ERROR,
}
MESSAGES = {
    Outcome.NO_ROUTE: "no route matches this request",
    Outcome.BAD_REQUEST: "the request is malformed (bad framing, oversize head or an invalid path)",
    Outcome.CLIENT_TIMEOUT: "the request body stalled longer than the route's idle timeout",
    Outcome.NO_HEALTHY_UPSTREAM: "no healthy instance is available for this route",
    Outcome.UPSTREAM_CONNECT_ERROR: "could not connect to the upstream",
    Outcome.UPSTREAM_TIMEOUT: "the upstream did not answer in time",
    Outcome.UPSTREAM_ERROR: "the upstream failed before sending a complete response",
    Outcome.DENIED_AUTH: "authentication failed or is missing",
    Outcome.DENIED_POLICY: "an access policy refused this request",
    Outcome.RATE_LIMITED: "rate limit exceeded",
    Outcome.PAYLOAD_TOO_LARGE: "the request body exceeds this route's limit",
    Outcome.INVALID_BODY: "the request body does not match this route's schema",
    Outcome.CIRCUIT_OPEN: "the upstream's circuit breaker is open",
    Outcome.UPSTREAM_OVERFLOW: "every instance is at its connection limit",
    Outcome.INTERNAL_ERROR: "internal error",
}


class _BodyFromClient:
    """Wraps the client's request body so a client that vanishes or stalls mid-upload is told apart from an
    upstream failure (the forwarder only sees its upload break), and a stall longer than the route's idle_s
    ends the exchange then, not when the upstream's response timeout fires."""

    def __init__(self, body: AsyncIterator[bytes], idle_s: float):
        self._body = body
        self._idle_s = idle_s
        self.client_gone = False
        self.timed_out = False
        self.started = False  # a byte was read: the body cannot be replayed to another attempt
        self.too_large: BodyTooLarge | None = None  # a size policy cut the streamed body

    async def __aiter__(self):
        self.started = True
        it = self._body.__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(it.__anext__(), self._idle_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                self.client_gone = self.timed_out = True
                raise ClientGone() from None
            except ClientGone as err:
                self.client_gone = True
                if isinstance(err, BodyTooLarge):
                    self.too_large = err
                raise
            yield chunk


class Engine:
    def __init__(self, snapshot: Snapshot, forwarder: Forwarder, telemetry: Telemetry, *,
                 clock_ns: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        self.snapshot = snapshot
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
        snap = self.snapshot  # the request keeps the snapshot it started with
        listener = snap.listeners[head.listener]
        trust = listener.incoming_trace_context
        trace = start_trace(head.header("traceparent"), head.header("tracestate"), head.header("baggage"),
                            trust, self.sampling_ratio, self.rng, self.parent_based)
        path, query = split_target(head.target)
        rec = RequestRecord(
            layer=self.layer_value, trace=trace, start_ns=self.clock_ns(), start_mono=self.monotonic(),
            method=head.method, path=path, query=query, scheme=head.scheme,
            host=(target_authority(head.target) or head.header("host") or head.server_address),
            server_port=head.server_port,
            client_address=head.client_address, client_port=head.client_port, protocol_version=head.version,
            user_agent=head.header("user-agent"), request_id=hdr.request_id(head.header("x-request-id"), self.rng),
            listener=head.listener)
        try:
            await self._phases(snap, head, body, down, rec)
        except ClientGone:
            rec.outcome = CLIENT_ABORT
            rec.error_type = ErrorType.CLIENT_ABORT.value
        except Exception:
            log.exception("request %s: internal error", rec.request_id)
            await self._fail(down, rec, Outcome.INTERNAL_ERROR, ErrorType.INTERNAL.value)
        finally:
            # LOG: exactly once per request.
            rec.end_ns = self.clock_ns()
            rec.duration_s = self.monotonic() - rec.start_mono
            self.telemetry.finish(rec)

    async def _phases(self, snap: Snapshot, head: RequestHead, body: AsyncIterator[bytes], down: Downstream,
                      rec: RequestRecord) -> None:
        # Canonical path: what routing sees is exactly what the upstream will get.
        try:
            path = canonical_path(rec.path)
        except InvalidPath:
            await self._fail(down, rec, Outcome.BAD_REQUEST, None)
            return
        rec.path = path

        # ROUTE
        match = snap.router.match(path, rec.host, head.method, head.index, rec.query)
        decisions.route(rec, match, self.clock_ns())
        if isinstance(match, NoRoute):
            await self._fail(down, rec, Outcome.NO_ROUTE, None)
            return
        route = match.route
        rec.route, rec.route_template, rec.upstream = route.name, match.template, route.upstream

        # POLICY: the route's policies in declared order; the first blocking verdict answers locally.
        chain = snap.policies.get(route.name)
        if not chain:
            await self._forward(snap, head, body, down, rec, route, path, None)
            return
        ctx = PolicyRequest(head=head, route=route.name, path=path, query=rec.query,
                            client_address=head.client_address, body=body if head.has_body else None,
                            now=self.clock_ns() / 1e9, rng=self.rng, trace_id=rec.trace.trace_id,
                            span_id=rec.trace.span_id)
        evaluated = []
        try:
            for policy in chain:
                evaluated.append(policy)
                verdict = await policy.evaluate(ctx)
                decisions.policy(rec, verdict, self.clock_ns())
                if verdict.block:
                    await self._answer(down, rec, verdict.outcome, verdict.status,
                                       verdict.headers + tuple(ctx.response_headers), verdict.message)
                    return
            rec.consumer = ctx.consumer
            await self._forward(snap, head, ctx.body if ctx.body is not None else body, down, rec, route,
                                ctx.path, ctx)
        finally:
            rec.consumer = ctx.consumer
            for policy in evaluated:  # circuit breakers learn from the result; exactly once per policy
                observe = getattr(policy, "observe", None)
                if observe is not None:
                    observe(ctx, rec.outcome, rec.status)

    async def _forward(self, snap: Snapshot, head: RequestHead, body: AsyncIterator[bytes], down: Downstream,
                       rec: RequestRecord, route, path: str, ctx: PolicyRequest | None) -> None:
        """PICK → UPSTREAM, attempt after attempt: each failure that left the client untouched is weighed by
        `balancer.retry.decide` (method, what reached the upstream, retry_on, attempts, deadline, budget)."""
        pool = snap.pools.get(route.upstream)
        cfg = route.retries
        if pool is not None and self.layer is Layer.EDGE:
            # In an edge process the pick is the balancer layer at work: give it its own span so the trace
            # shows both layers. A balancer tier's SERVER span already is the balancer layer.
            rec.balance_span_id = new_span_id(self.rng)
        rec.balance_start_ns = self.clock_ns()
        target = strip_prefix(path, route.rewrite.strip_prefix) if route.rewrite.strip_prefix else path
        if rec.query:
            target += "?" + rec.query
        client_body = _BodyFromClient(body, route.timeouts.idle_s) if head.has_body else None
        extra = list(ctx.response_headers) if ctx is not None else []
        key = request_keys.hash_key(pool.config.hash_key, head, rec.query) if pool is not None and pool.config.hash_key else None
        affinity = pool.affinity_target(request_keys.cookie(head, pool.config.affinity.cookie)) \
            if pool is not None and pool.config.affinity else None
        budget = snap.budgets.get(route.upstream)
        if budget is None:
            budget = snap.budgets[route.upstream] = RetryBudget()
        deadline = self.monotonic() + cfg.deadline_s if cfg.deadline_s else None
        per_try_s = cfg.per_try_timeout_s or route.timeouts.response_s
        tried: dict[str, str] = {}
        previous: str | None = None
        budget.active += 1
        try:
            for n in range(cfg.attempts):
                try:
                    # PICK
                    if pool is not None:
                        ep = pool.usable(affinity, tried) if affinity else None
                        picked = ep if ep is not None else pool.pick(key, tried, self.rng)
                        if tried and isinstance(picked, NoHealthyEndpoint):  # only tried ones left: reuse one
                            picked = pool.pick(key, {}, self.rng)
                        lb = decisions.pick(rec, pool, picked, affinity is not None and ep is not None, key, self.clock_ns())
                        if isinstance(picked, NoHealthyEndpoint):
                            await self._fail(down, rec, Outcome.UPSTREAM_OVERFLOW if picked.overflow
                                             else Outcome.NO_HEALTHY_UPSTREAM, None)
                            return
                        ep = picked if isinstance(picked, Endpoint) else picked.endpoint
                        host, port, scheme, instance, zone = ep.host, ep.port, "http", ep.id, ep.zone
                        layer = BALANCER
                        if pool.config.affinity:  # (re)pin the client to the instance of the last attempt
                            a = pool.config.affinity
                            extra = [h for h in extra if h[0] != "Set-Cookie" or not h[1].startswith(a.cookie + "=")]
                            if ep.id != affinity:
                                extra.append(("Set-Cookie", request_keys.affinity_cookie(a, pool.affinity_value(ep.id))))
                    else:
                        remote = snap.remotes[route.upstream]
                        host, port, scheme, zone, ep, lb = remote.host, remote.port, remote.scheme, None, None, {}
                        instance, layer = f"{remote.host}:{remote.port}", self.layer_value
                    if n and pool is not None and previous != instance:
                        decisions.failover(rec, pool.name, previous, instance, self.clock_ns())
                    previous = instance
                    # UPSTREAM
                    response_s = per_try_s if deadline is None else max(0.001, min(per_try_s, deadline - self.monotonic()))
                    failure = await self._attempt(snap, head, rec, route, pool, ep, layer, host, port, scheme,
                                                  instance, zone, target, client_body, down, ctx, extra, lb, n,
                                                  response_s, cfg)
                finally:
                    if n:  # this retry's share of the budget, reserved when it was granted
                        budget.retrying -= 1
                if failure is None:
                    return
                # RETRY? (the client has seen nothing yet)
                error_type, status, response = failure
                kind = Failure.STATUS if status is not None else failure_of(error_type)
                tried[instance] = Exclusion.TRIED.value
                budget_left = budget.left(cfg.budget)
                verdict = retry_decide(cfg, head.method, kind, n + 1, _body_state(client_body), budget_left,
                                       None if deadline is None else deadline - self.monotonic())
                if cfg.attempts > 1:
                    decisions.retry(rec, route.name, verdict, n + 1, budget_left, instance, kind, self.clock_ns())
                if not verdict.retry:
                    if response is not None:  # a retryable status nobody may retry: relay it as it is
                        last = rec.attempts[-1]
                        await self._relay(response, down, rec, last, extra, self.monotonic() - last.duration_s)
                        return
                    outcome = FAILURE_OUTCOME.get(error_type, Outcome.UPSTREAM_ERROR)
                    await self._fail(down, rec, outcome, error_type.value)
                    return
                budget.retrying += 1  # reserved now, so failures arriving during the backoff see it taken
                if response is not None:
                    response.close()
                pause = backoff_s(cfg, n + 1, self.rng)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - self.monotonic()))
                if pause:
                    await asyncio.sleep(pause)
        finally:
            budget.active -= 1
            rec.balance_end_ns = self.clock_ns()

    async def _attempt(self, snap, head, rec, route, pool, ep, layer, host, port, scheme, instance, zone, target,
                       client_body, down, ctx, extra, lb, n, response_s, cfg):
        """One attempt. Returns None when the request is settled (relayed, answered, aborted) or
        `(error_type, status, response)` when it failed before the client saw anything (status/response set
        for a retryable status whose response is still unread)."""
        attempt = AttemptRecord(
            span_id=new_span_id(self.rng), layer=layer, upstream=route.upstream, instance=instance,
            zone=zone, host=host, port=port, url_full=f"{scheme}://{_hostport(host, port)}{target}",
            method=head.method, resend_count=n, start_ns=self.clock_ns())
        attempt.lb = lb
        rec.attempts.append(attempt)
        listener = snap.listeners[head.listener]
        up_headers = hdr.upstream_request_headers(
            head.headers, client_address=head.client_address, scheme=head.scheme, host=head.header("host"),
            upstream_host=_hostport(host, port), preserve_host=route.preserve_host,
            trust_forwarded=listener.trust_forwarded_headers, request_id=rec.request_id,
            traceparent=format_traceparent(rec.trace.trace_id, attempt.span_id, rec.trace.sampled),
            tracestate=rec.trace.tracestate, version=head.version,
            keep_baggage=rec.trace.treatment == "continued", index=head.index)
        if ctx is not None and (ctx.upstream_set or ctx.upstream_remove):
            up_headers = hdr.apply_changes(up_headers, ctx.upstream_set, ctx.upstream_remove)
        request = UpstreamRequest(head.method, host, port, scheme, target, up_headers, head.has_body)
        attempt_mono = self.monotonic()
        if ep is not None:
            pool.acquire(ep)
        result = Result.SUCCESS
        try:
            t = route.timeouts
            try:
                response = await self.forwarder.send(
                    route.upstream, request, client_body.__aiter__() if client_body else None, t.connect_s,
                    response_s, t.idle_s)
            except UpstreamFailure as failure:
                if client_body is not None and client_body.timed_out:
                    attempt.error_type, attempt.outcome = ErrorType.CLIENT_TIMEOUT.value, Outcome.CLIENT_TIMEOUT.value
                    await self._fail(down, rec, Outcome.CLIENT_TIMEOUT, ErrorType.CLIENT_TIMEOUT.value)
                    return None
                if client_body is not None and client_body.too_large is not None:
                    # A size policy cut the upload after forwarding began: the late refusal is the policy's.
                    decisions.late_size_refusal(rec, client_body.too_large, self.clock_ns())
                    attempt.outcome = Outcome.PAYLOAD_TOO_LARGE.value
                    rec.outcome = Outcome.PAYLOAD_TOO_LARGE.value
                    # the rest of the upload may still be arriving: answer, then close the connection
                    down.close_after_response()
                    await self._answer(down, rec, Outcome.PAYLOAD_TOO_LARGE, 413, (), None)
                    return None
                if client_body is not None and client_body.client_gone:
                    raise ClientGone() from None
                outcome = FAILURE_OUTCOME.get(failure.error_type, Outcome.UPSTREAM_ERROR)
                attempt.error_type, attempt.outcome = failure.error_type.value, outcome.value
                result = Result.GATEWAY_ERROR
                return failure.error_type, None, None
            attempt.status = response.status
            attempt.peer_address, attempt.peer_port = response.peer_address, response.peer_port
            result = classify(response.status, False)
            if cfg.attempts > 1 and "status" in cfg.retry_on and response.status in cfg.statuses:
                attempt.error_type, attempt.outcome = ErrorType.STATUS_5XX.value, Outcome.UPSTREAM_ERROR.value
                attempt.end_ns, attempt.duration_s = self.clock_ns(), self.monotonic() - attempt_mono
                return ErrorType.STATUS_5XX, response.status, response
            # RESPONSE
            if not await self._relay(response, down, rec, attempt, extra, attempt_mono):
                result = Result.GATEWAY_ERROR
            return None
        finally:
            if ep is not None:
                pool.release(ep)
                if pool.passive_health:
                    pool.observe(ep.id, result, f"{rec.trace.trace_id:032x}", f"{attempt.span_id:016x}")
            attempt.end_ns = attempt.end_ns or self.clock_ns()
            attempt.duration_s = attempt.duration_s or (self.monotonic() - attempt_mono)

    async def _relay(self, response, down: Downstream, rec: RequestRecord, attempt: AttemptRecord, extra_headers,
                     attempt_mono: float) -> bool:
        """Relay the response head and stream its body. False when the upstream failed mid-body (the client
        connection is aborted so the truncated body cannot look complete)."""
        headers, length = hdr.downstream_response_headers(response.headers, rec.protocol_version)
        headers.append(("X-Request-Id", rec.request_id))
        headers.extend(extra_headers)
        if self.telemetry_enabled and rec.trace.sampled and self.snapshot.listeners[rec.listener].trace_response_header:
            headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))
        rec.status = response.status
        attempt.error_type = attempt.outcome = None
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
            attempt.error_type, attempt.outcome = failure.error_type.value, outcome.value
            rec.outcome, rec.error_type = outcome.value, failure.error_type.value
            return False
        except ClientGone:
            response.close()
            attempt.outcome = CLIENT_ABORT
            raise
        finally:
            attempt.end_ns = self.clock_ns()
            attempt.duration_s = self.monotonic() - attempt_mono
        response.close()
        attempt.outcome = rec.outcome = PROXIED
        return True

    # --- local answers ---

    def reject(self, listener: str, peer: tuple[str, int], sock: tuple[str, int], status: int,
               reason: str) -> tuple[bytes, str]:
        """A request the listener could not parse (framing conflict, oversize head, bad syntax): record it
        like any other request (outcome `bad_request`, `error.type` = the parser's reason) and return the JSON
        body to answer with. Called by the listener, which owns the bytes on the wire."""
        trace = start_trace(None, None, None, "ignore", self.sampling_ratio, self.rng)
        now_ns, now = self.clock_ns(), self.monotonic()
        rec = RequestRecord(
            layer=self.layer.value, trace=trace, start_ns=now_ns, start_mono=now, method="_OTHER", path="",
            query="", scheme="http", host=sock[0], server_port=sock[1], client_address=peer[0],
            client_port=peer[1], protocol_version="1.1", user_agent=None, request_id=hdr.request_id(None, self.rng),
            listener=listener, outcome=Outcome.BAD_REQUEST.value, status=status, error_type=reason,
            end_ns=now_ns)
        self.telemetry.finish(rec)
        return _error_body(Outcome.BAD_REQUEST, status, rec.request_id, rec.layer), rec.request_id

    async def _fail(self, down: Downstream, rec: RequestRecord, outcome: Outcome, error_type: str | None) -> None:
        rec.error_type = error_type
        await self._answer(down, rec, outcome, OUTCOME_STATUS[outcome], (), None)

    async def _answer(self, down: Downstream, rec: RequestRecord, outcome: Outcome, status: int,
                      extra: tuple[tuple[str, str], ...], message: str | None) -> None:
        """Answer locally: a small JSON body naming the outcome (none for 204/304), or, when the response head
        is already out, a broken connection (the only honest signal left)."""
        rec.outcome = outcome.value
        if down.started:
            down.abort()
            return
        rec.status = status
        payload = b"" if status in (204, 304) else _error_body(outcome, status, rec.request_id, rec.layer, message)
        headers = [("X-Request-Id", rec.request_id), ("Cache-Control", "no-store"), *extra]
        if payload:
            headers.insert(0, ("Content-Type", "application/json"))
        if self.telemetry_enabled and rec.trace.sampled and self.snapshot.listeners[rec.listener].trace_response_header:
            headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))
        await down.respond(status, None, tuple(headers), payload)


def _error_body(outcome: Outcome, status: int, request_id: str, layer: str, message: str | None = None) -> bytes:
    return json.dumps({"error": {"status": status, "outcome": outcome.value, "message": message or MESSAGES[outcome],
                                 "request_id": request_id, "layer": layer}}).encode()


def _body_state(body: _BodyFromClient | None) -> Body:
    if body is None:
        return Body.NONE
    return Body.CONSUMED if body.started else Body.UNREAD


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""Aggregate routes: several upstream calls in parallel, one composed JSON response (config: `edge.aggregation`).

Where it runs: the engine's UPSTREAM phase for a route with `aggregate` (after ROUTE and POLICY, instead of the
attempt loop). Each call is one attempt through the engine's forwarder — a pool's instance picked by the
balancer (the pick recorded as for any request), or a URL upstream — and one CLIENT span under the request's
SERVER span, with the usual attempt attributes and metrics plus `gatewatch.aggregate.call`. A call gets no
request body, `Accept: application/json`, no conditional or range headers and no `Accept-Encoding` (its body
must be readable), and the upstream's own host as `Host`.

A call's part is usable when it answers 2xx with a JSON body of at most `max_body_bytes` (a JSON object, for
`merge`) within `timeout_s` (connect, response head and body together). Otherwise it failed, with a reason from
`AggregateCall`. A failure fails the request when `on_error: fail` or the call is `required`: the other calls
are cancelled and the client gets 502 (504 for a timeout, 503 when a pool had no instance), naming the call and
its reason. With `on_error: omit` the part is left out (`merge`) or null (`template`), the response lists it in
`"_partial": {"call": "reason"}` and the `x-gatewatch-partial` header (comma-separated call names).

Recorded once per request: a `gatewatch.decision.aggregate` record (composed | partial | failed, which calls
made it, their sizes) and `gatewatch_aggregate_calls_total{route, call, result}`.

Primitives: `Plan`, `compile_plan(cfg, pools, remotes)` (at snapshot build), `run(engine, ctx)` (per request);
the composition itself (`merge`, `render`) is pure, in `edge.aggregation`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from gatewatch.balancer.context import PickContext
from gatewatch.balancer.health import Result, classify
from gatewatch.edge.aggregation import PARAM, AggregateCallConfig, AggregateConfig, Reference, dig, merge, render
from gatewatch.edge.policies import json_transform
from gatewatch.io.interfaces import UpstreamFailure, UpstreamRequest
from gatewatch.proxy import headers as hdr
from gatewatch.proxy import recording
from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, format_traceparent, hex64, hex128, new_span_id
from gatewatch.telemetry.names import (AggregateCall, Attr, DecisionKind, DecisionResult, ErrorType, Layer, Outcome,
                                       Reason)

if TYPE_CHECKING:
    from gatewatch.proxy.context import RequestContext
    from gatewatch.proxy.engine import Engine

BALANCER = Layer.BALANCER.value
PROXIED = Outcome.PROXIED.value
# Never sent on a call: it has no body (framing), its body must be plain JSON (encoding, Accept), and a
# conditional or partial answer (304, 206) would not be a part (RFC 9110 §13, §14).
CALL_DROP = frozenset({"content-length", "content-type", "content-encoding", "accept", "accept-encoding", "range",
                       "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"})
TIMEOUTS = frozenset({ErrorType.CONNECT_TIMEOUT, ErrorType.RESPONSE_TIMEOUT, ErrorType.READ_TIMEOUT})
CONNECT = frozenset({ErrorType.DNS_ERROR, ErrorType.CONNECT_REFUSED, ErrorType.CONNECT_ERROR})
# The request's outcome when a call fails it (else upstream_error, 502)
FAIL_OUTCOME = {AggregateCall.TIMEOUT: Outcome.UPSTREAM_TIMEOUT, AggregateCall.CONNECT_ERROR:
                Outcome.UPSTREAM_CONNECT_ERROR, AggregateCall.TLS_ERROR: Outcome.UPSTREAM_TLS_ERROR,
                AggregateCall.NO_HEALTHY_UPSTREAM: Outcome.NO_HEALTHY_UPSTREAM,
                AggregateCall.OVERFLOW: Outcome.UPSTREAM_OVERFLOW}


@dataclass(frozen=True, slots=True)
class Call:
    cfg: AggregateCallConfig
    pool: Any  # balancer.pool.Pool of this process, or None
    remote: Any  # proxy.snapshot.RemoteTarget, or None
    path: tuple[tuple[str, str | None], ...]  # (literal, parameter or None) pieces of the path
    query: tuple[tuple[str, str | None], ...]  # the same for the query part ("" when none)
    needs_object: bool  # compose: merge — the body must be a JSON object


@dataclass(frozen=True, slots=True)
class Plan:
    cfg: AggregateConfig
    calls: tuple[Call, ...]


class Part(NamedTuple):
    name: str
    result: AggregateCall
    body: Any = None  # the parsed JSON (result ok)
    size: int = 0
    status: int | None = None
    error_type: str | None = None


def _pieces(text: str) -> tuple[tuple[str, str | None], ...]:
    out, pos = [], 0
    for m in PARAM.finditer(text):
        out.append((text[pos:m.start()], m.group(1)))
        pos = m.end()
    out.append((text[pos:], None))
    return tuple(out)


def compile_plan(cfg: AggregateConfig, pools, remotes) -> Plan:
    calls = []
    for c in cfg.calls:
        path, _, query = c.path.partition("?")
        calls.append(Call(c, pools.get(c.upstream), remotes.get(c.upstream), _pieces(path), _pieces(query),
                          cfg.compose == "merge"))
    return Plan(cfg, tuple(calls))


def _expand(pieces, params: dict[str, str], in_query: bool) -> str:
    # A parameter is one path segment as the client sent it (canonical, percent-encoded where needed). In a query
    # its delimiters are encoded so a value cannot add parameters (RFC 3986 §3.4).
    out = []
    for lit, p in pieces:
        out.append(lit)
        if p is not None:
            out.append(quote(params[p], safe="%-._~!$'()*,;:@/") if in_query else params[p])
    return "".join(out)


def call_target(call: Call, params: dict[str, str], client_query: str) -> str:
    target = _expand(call.path, params, False)
    query = _expand(call.query, params, True)
    if call.cfg.query == "pass" and client_query:
        query = f"{query}&{client_query}" if query else client_query
    return f"{target}?{query}" if query else target


def path_params(template: str | None, path: str) -> dict[str, str]:
    """The route template's `{name}`s against the canonical path routing matched."""
    if template is None:
        return {}
    return {want[1:-1]: got for want, got in zip(template.split("/"), path.split("/")) if want.startswith("{")}


def part_value(parts: dict[str, Part]):
    """A template reference's value: the call's status or a path into its body; None for a failed call."""
    def value(ref: Reference) -> Any:
        part = parts.get(ref.call)
        if part is None or part.result is not AggregateCall.OK:
            return None
        return part.status if ref.part == "status" else dig(part.body, ref.path)

    return value


# --- one request ---

async def run(engine: Engine, ctx: RequestContext) -> None:
    """UPSTREAM for an aggregate route: every call at once, then one answer (composed, or the failure)."""
    plan: Plan = ctx.target.aggregate
    rec = ctx.rec
    params = path_params(ctx.route.match.path.template, rec.path)
    tasks = {asyncio.ensure_future(_call(engine, ctx, call, params)): call for call in plan.calls}
    parts: dict[str, Part] = {}
    fatal: Part | None = None
    try:
        pending = set(tasks)
        while pending and fatal is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                part = t.result()
                parts[part.name] = part
                if part.result is not AggregateCall.OK and fatal is None and (
                        plan.cfg.on_error == "fail" or tasks[t].cfg.required):
                    fatal = part
    finally:
        for t in tasks:  # fail fast: the others are not needed any more (or the request itself is gone)
            t.cancel()
        for part in await asyncio.gather(*tasks, return_exceptions=True):  # each books its attempt's end
            if isinstance(part, Part):
                parts.setdefault(part.name, part)
        rec.lb, rec.failover = {}, None  # each call's pick is on its own span; none is the request's
    ordered = [parts.get(c.cfg.name) or Part(c.cfg.name, AggregateCall.CANCELLED) for c in plan.calls]
    _count(engine, ctx, ordered)
    if fatal is not None:
        _decide(engine, ctx, plan, ordered, DecisionResult.FAILED, Reason.AGGREGATE_CALL_FAILED, None)
        outcome = FAIL_OUTCOME.get(fatal.result, Outcome.UPSTREAM_ERROR)
        await engine._fail(ctx, outcome, fatal.error_type,
                           f"aggregate call {fatal.name!r} failed: {fatal.result.value}")
        return
    await _compose(engine, ctx, plan, ordered)


async def _compose(engine: Engine, ctx: RequestContext, plan: Plan, parts: list[Part]) -> None:
    cfg = plan.cfg
    failed = [p for p in parts if p.result is not AggregateCall.OK]
    if cfg.compose == "merge":
        doc = merge([p.body for p in parts if p.result is AggregateCall.OK])
    else:
        doc = render(cfg.template, part_value({p.name: p for p in parts}))
    json_transform.transform_document(ctx, doc, sum(p.size for p in parts), engine.clock_ns)  # response edits
    if failed:
        doc["_partial"] = {p.name: p.result.value for p in failed}
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    rec = ctx.rec
    _decide(engine, ctx, plan, parts, DecisionResult.PARTIAL if failed else DecisionResult.COMPOSED,
            Reason.AGGREGATE_PARTS_OMITTED if failed else Reason.AGGREGATE_ALL_OK, len(body))
    headers = [("Content-Type", "application/json"), ("X-Request-Id", rec.request_id)]
    if failed:
        headers.append((cfg.partial_header, ",".join(p.name for p in failed)))
    headers.extend(ctx.response_headers)
    if engine._trace_response(ctx):
        headers.append(("traceresponse", format_traceparent(rec.trace.trace_id, rec.trace.span_id, True)))
    rec.status = 200
    rec.outcome = PROXIED
    await ctx.down.respond(200, None, tuple(headers), body)


def _decide(engine: Engine, ctx: RequestContext, plan: Plan, parts: list[Part], result: DecisionResult,
            reason: Reason, size: int | None) -> None:
    rec = ctx.rec
    attrs = {Attr.AGGREGATE_COMPOSE: plan.cfg.compose,
             Attr.AGGREGATE_OK: tuple(p.name for p in parts if p.result is AggregateCall.OK),
             Attr.AGGREGATE_FAILED: tuple(f"{p.name}={p.result.value}" for p in parts
                                          if p.result is not AggregateCall.OK),
             Attr.AGGREGATE_SIZES: tuple(f"{p.name}={p.size}" for p in parts if p.size),
             Attr.AGGREGATE_RESPONSE_BYTES: size}
    rec.decisions.append(DecisionRecord(DecisionKind.AGGREGATE, ctx.route.name, result.value, reason.value,
                                        engine.clock_ns(), rec.trace.span_id,
                                        {k: v for k, v in attrs.items() if v not in (None, ())}))


def _count(engine: Engine, ctx: RequestContext, parts: list[Part]) -> None:
    counter = engine.telemetry.metrics.aggregate_calls
    for p in parts:
        counter.labels(ctx.route.name, p.name, p.result.value).inc()


async def _call(engine: Engine, ctx: RequestContext, call: Call, params: dict[str, str]) -> Part:
    """One call: PICK (a pool's) → one attempt → the body, bounded. Never raises but for cancellation."""
    rec, cfg, name = ctx.rec, call.cfg, call.cfg.name
    ep = None
    if call.pool is not None:
        p = PickContext(call.pool, None, None).pick(engine.rng)
        lb = recording.pick(rec, p, engine.clock_ns())
        ep = p.endpoint
        if ep is None:
            no = AggregateCall.OVERFLOW if p.reason == Reason.PICK_OVERFLOW else AggregateCall.NO_HEALTHY_UPSTREAM
            return Part(name, no)
        host, port, scheme, instance, zone, layer = ep.host, ep.port, call.pool.scheme, ep.id, ep.zone, BALANCER
    else:
        r = call.remote
        host, port, scheme, instance, zone, layer, lb = r.host, r.port, r.scheme, r.instance, None, \
            engine.layer_value, {}
    target = call_target(call, params, rec.query)
    record = AttemptRecord(span_id=new_span_id(engine.rng), layer=layer, upstream=cfg.upstream, instance=instance,
                           zone=zone, host=host, port=port, url_full="", method=cfg.method, resend_count=0,
                           start_ns=engine.clock_ns())
    record.lb = {**lb, Attr.AGGREGATE_CALL: name}
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    record.url_full = f"{scheme}://{hostport}{target}"
    rec.attempts.append(record)
    request = UpstreamRequest(cfg.method, host, port, scheme, target, _headers(ctx, record, hostport), False)
    started = engine.monotonic()
    if ep is not None:
        call.pool.acquire(ep)
    health = Result.SUCCESS
    try:
        part = await _exchange(engine, ctx, call, request, record)
        health = classify(record.status, record.status is None)
        return part
    except asyncio.CancelledError:
        record.error_type, record.outcome = ErrorType.CANCELLED.value, None
        raise
    finally:
        record.end_ns = engine.clock_ns()
        record.duration_s = engine.monotonic() - started
        if ep is not None:
            call.pool.release(ep)
            if call.pool.passive_health and record.error_type != ErrorType.CANCELLED.value:
                call.pool.observe(ep.id, health, hex128(rec.trace.trace_id), hex64(record.span_id))


async def _exchange(engine: Engine, ctx: RequestContext, call: Call, request: UpstreamRequest,
                    record: AttemptRecord) -> Part:
    cfg, name = call.cfg, call.cfg.name
    limit = cfg.max_body_bytes
    response = None
    try:
        async with asyncio.timeout(cfg.timeout_s):
            response = await engine.forwarder.send(
                cfg.upstream, request, None, min(ctx.route.timeouts.connect_s, cfg.timeout_s), cfg.timeout_s,
                cfg.timeout_s, record)
            record.status = response.status
            record.peer_address, record.peer_port = response.peer_address, response.peer_port
            declared = hdr.content_length(response.headers)
            if declared is not None and declared > limit:
                return _failed(record, name, AggregateCall.TOO_LARGE, ErrorType.RESPONSE_TOO_LARGE, declared)
            chunks, size = [], 0
            if response.whole is not None and declared == len(response.whole):
                chunks, size = [response.whole], len(response.whole)
            else:
                async for chunk in response.body():
                    size += len(chunk)
                    if size > limit:
                        return _failed(record, name, AggregateCall.TOO_LARGE, ErrorType.RESPONSE_TOO_LARGE, size)
                    chunks.append(chunk)
    except TimeoutError:
        kind = ErrorType.RESPONSE_TIMEOUT if record.status is None else ErrorType.READ_TIMEOUT
        record.error_type, record.outcome = kind.value, Outcome.UPSTREAM_TIMEOUT.value
        return Part(name, AggregateCall.TIMEOUT, status=record.status, error_type=kind.value)
    except UpstreamFailure as failure:
        return _transport_failure(record, name, failure)
    finally:
        if response is not None:
            response.close()
    record.outcome = PROXIED
    if not 200 <= record.status < 300:
        return Part(name, AggregateCall.STATUS, size=size, status=record.status,
                    error_type=ErrorType.UNEXPECTED_STATUS.value)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        return _failed(record, name, AggregateCall.NOT_JSON, ErrorType.RESPONSE_NOT_JSON, size)
    if call.needs_object and not isinstance(body, dict):
        return _failed(record, name, AggregateCall.NOT_OBJECT, ErrorType.RESPONSE_NOT_JSON, size)
    return Part(name, AggregateCall.OK, body, size, record.status)


def _failed(record: AttemptRecord, name: str, result: AggregateCall, error: ErrorType, size: int) -> Part:
    record.error_type = error.value
    record.outcome = Outcome.UPSTREAM_ERROR.value
    return Part(name, result, size=size, status=record.status, error_type=error.value)


def _transport_failure(record: AttemptRecord, name: str, failure: UpstreamFailure) -> Part:
    et = failure.error_type
    record.error_type = et.value
    if et in TIMEOUTS:
        result, outcome = AggregateCall.TIMEOUT, Outcome.UPSTREAM_TIMEOUT
    elif et in CONNECT:
        result, outcome = AggregateCall.CONNECT_ERROR, Outcome.UPSTREAM_CONNECT_ERROR
    elif et is ErrorType.UPSTREAM_TLS_ERROR:
        result, outcome = AggregateCall.TLS_ERROR, Outcome.UPSTREAM_TLS_ERROR
        record.tls_failure = failure.tls_failure
    else:
        result, outcome = AggregateCall.UPSTREAM_ERROR, Outcome.UPSTREAM_ERROR
    record.outcome = outcome.value
    return Part(name, result, status=record.status, error_type=et.value)


def _headers(ctx: RequestContext, record: AttemptRecord, hostport: str) -> tuple[tuple[str, str], ...]:
    head, rec = ctx.head, ctx.rec
    client = tuple(h for h in head.headers if h[0].lower() not in CALL_DROP)
    headers = hdr.upstream_request_headers(
        client, client_address=head.client_address, scheme=head.scheme, host=head.header("host"),
        upstream_host=hostport, preserve_host=False, trust_forwarded=ctx.listener.trust_forwarded_headers,
        request_id=rec.request_id, traceparent=format_traceparent(rec.trace.trace_id, record.span_id,
                                                                  rec.trace.sampled),
        tracestate=rec.trace.tracestate, version=head.version, baggage=rec.trace.baggage)
    req = ctx.policy
    if req is not None and (req.upstream_set or req.upstream_remove):
        headers = hdr.apply_changes(headers, [h for h in req.upstream_set if h[0].lower() not in CALL_DROP],
                                    req.upstream_remove)
    return headers + (("Accept", "application/json"),)

"""What the engine's phases share: one context per request, one per attempt (Pingora's CTX, Envoy's
LoadBalancerContext and StreamInfo in Python).

- `RequestContext`: the request as every phase sees it — the snapshot it started with (and never leaves), its
  head and body, where to answer, its telemetry record, and what the phases have established so far: the route
  and its compiled target, the canonical path (a rewrite policy may change it), the policies' view of the
  request, the headers added to whatever the client gets.
- `AttemptContext`: one attempt on one upstream instance — where it goes and why (the pick's span attributes),
  how long it may wait, its telemetry record and how it ended for outlier detection.
- `ClientBody`: the client's request body as an attempt streams it upstream, telling a client that vanished or
  stalled apart from an upstream failure (the forwarder only sees its upload break).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.cython_shim import slotted
from gatewatch.balancer.algorithms import Endpoint
from gatewatch.balancer.health import Result
from gatewatch.balancer.context import PickContext
from gatewatch.balancer.retry import Body, RetryState
from gatewatch.config import ListenerConfig
from gatewatch.edge.config import RouteConfig
from gatewatch.edge.policies.base import PolicyRequest
from gatewatch.edge.policies.bodies import BodyTooLarge
from gatewatch.io.interfaces import ClientGone, Downstream, RequestHead
from gatewatch.proxy.plan import RoutePlan, Target
from gatewatch.proxy.snapshot import Snapshot
from gatewatch.telemetry.context import AttemptRecord, RequestRecord


@dataclass(eq=False)
class RequestContext:
    snap: Snapshot
    head: RequestHead
    body: AsyncIterator[bytes] | None  # the client's body (a policy may replace it, e.g. with a replay)
    down: Downstream
    rec: RequestRecord
    listener: ListenerConfig
    path: str = ""  # canonical; what routing saw and, after any rewrite policy, what the upstream gets
    route: RouteConfig | None = None
    plan: RoutePlan | None = None  # what the request path reads of the route's config (set with `route`)
    target: Target | None = None  # the route's compiled target: pool or URL upstream, budget, policies
    policy: PolicyRequest | None = None  # set when the route has policies
    evaluated: int = 0  # policies evaluated so far (each learns the result once the request ends)
    response_headers: list[tuple[str, str]] = None  # type: ignore[assignment]  # added to any answer ([]: post_init)
    client_body: ClientBody | None = None
    upstream_target: str = ""  # the request target sent upstream: path after rewrites + "?" + raw query
    backoff_s: float = 0.0  # the backoff slept before the next attempt
    picking: PickContext | None = None  # the pool's pick state across attempts (None for a URL upstream)
    retries: RetryState | None = None  # set while the request is in the balancer's books (PICK → UPSTREAM)
    attempt: AttemptContext | None = None  # the latest attempt
    mirror: Any = None  # the request's shadow (`proxy.mirror.Flight`) when the route's mirror selected it
    cache: Any = None  # the request's way through the route's response cache (`proxy.cache.Flow`)

    def __post_init__(self) -> None:  # a fresh list, as telemetry.context.DecisionRecord makes its dict
        if self.response_headers is None:
            self.response_headers = []


@dataclass(eq=False)
class AttemptContext:
    n: int  # 0 for the first try
    host: str
    port: int
    scheme: str
    instance: str  # the instance id of a pool, host:port of a URL upstream
    zone: str | None
    layer: str  # the layer that made the pick: balancer for a pool, this process's layer for a URL upstream
    endpoint: Endpoint | None  # the pool's endpoint (None for a URL upstream)
    lb: dict[str, Any]  # the pick's span attributes
    response_s: float = 0.0  # how long to wait for the response head
    start: float = 0.0  # monotonic clock when the attempt began
    record: AttemptRecord | None = None
    result: Result = Result.SUCCESS  # how outlier detection sees the attempt
    ended: bool = False  # its end was booked (the pool's count, outlier detection): exactly once


if not cython.compiled:  # as Python: slotted, like the extension types they compile to (context.pxd)
    RequestContext, AttemptContext = slotted(RequestContext), slotted(AttemptContext)


class ClientBody:
    def __init__(self, body: AsyncIterator[bytes], idle_s: float):
        self._body = body
        self._idle_s = idle_s
        self.client_gone = False
        self.timed_out = False  # stalled longer than the route's idle_s: answered 408 then, not at response_s
        self.started = False  # a byte was read: the body cannot be replayed to another attempt
        self.too_large: BodyTooLarge | None = None  # a size policy cut the streamed body

    def state(self) -> Body:
        return Body.CONSUMED if self.started else Body.UNREAD

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

"""What every request on a route reads of the snapshot, built once per snapshot: `RoutePlan` (its config, read
out of it) and `Target` (where its requests go).

A hot module (compiled, with `plan.pxd`): the engine reads their fields on every request, and as extension types
held typed by `RequestContext` those reads are C field accesses instead of attribute lookups by name. Neither is
changed after the snapshot is built; compiled, their fields are read-only from Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    from gatewatch.balancer.pool import Pool
    from gatewatch.balancer.retry import RetryBudget
    from gatewatch.edge.config import RouteConfig
    from gatewatch.proxy.mirror import MirrorTarget
    from gatewatch.proxy.snapshot import RemoteTarget
    from gatewatch.proxy.split import Split


class RoutePlan:
    """What every request on a route reads of its config, read out of it once. A pydantic model's attribute read
    goes through its `__getattr__` hook (several hundred instructions, two for `route.timeouts.idle_s`); these
    are slots. `retry_statuses` is empty unless the route retries on a status at all."""

    __slots__ = ("name", "upstream", "strip_prefix", "connect_s", "idle_s", "retries", "retry_attempts",
                 "retry_statuses", "per_try_s", "deadline_s", "preserve_host", "cache")

    def __init__(self, route: RouteConfig):
        t, r = route.timeouts, route.retries
        self.name = route.name
        self.upstream = route.upstream
        self.strip_prefix = route.rewrite.strip_prefix
        self.connect_s, self.idle_s = t.connect_s, t.idle_s
        self.retries = r
        self.retry_attempts = r.attempts
        self.retry_statuses = frozenset(r.statuses) if r.attempts > 1 and "status" in r.retry_on else frozenset()
        self.per_try_s = r.per_try_timeout_s or t.response_s  # an attempt's wait for its response head
        self.deadline_s = r.deadline_s
        self.preserve_host = route.preserve_host
        self.cache = route.cache


class Target:
    """Where one route's requests go: a pool of this process or a URL upstream, with the route's retry budget and
    compiled policies; or, for a route with `upstreams`, a `split.Split` between one such target per side; and the
    route's mirror."""

    __slots__ = ("upstream", "pool", "remote", "budget", "policies", "aggregate", "split", "mirror")

    def __init__(self, upstream: str | None, pool: Pool | None, remote: RemoteTarget | None,
                 budget: RetryBudget | None, policies: tuple, aggregate: Any = None, split: Split | None = None,
                 mirror: MirrorTarget | None = None):
        self.upstream = upstream  # "" for a split: the side's Target replaces this one at ROUTE
        self.pool = pool  # a pool of this process's balancer layer, or
        self.remote = remote  # a URL upstream
        self.budget = budget  # live: shared by every snapshot that routes to this upstream (None for a split)
        self.policies = policies  # the route's compiled policies, in declared order
        self.aggregate = aggregate  # an aggregate route's compiled calls (`proxy.aggregate.Plan`)
        self.split = split  # a route with `upstreams`: which side's Target takes a request (issue 19)
        self.mirror = mirror  # the route's shadow upstream (issue 19)

    def __repr__(self) -> str:
        return f"Target(upstream={self.upstream!r}, pool={self.pool!r}, remote={self.remote!r})"

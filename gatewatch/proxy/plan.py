"""`RoutePlan`: what every request on a route reads of its config, read out of it once per snapshot.

A hot module (compiled, with `plan.pxd`): the engine reads a plan's fields on every request, and as an extension
type held typed by `RequestContext` those reads are C field accesses instead of attribute lookups by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only
    from gatewatch.edge.config import RouteConfig


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

"""The runtime snapshot of one layer: compiled routes and the targets they point at, swapped whole on reload.

A request keeps the snapshot it started with (the engine reads `engine.snapshot` once per request).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gatewatch.balancer.pool import Pool
from gatewatch.config import ListenerConfig
from gatewatch.edge.routing import Router
from gatewatch.telemetry.names import Layer


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """A URL upstream: a separate balancer tier or a self-balancing service. One connection pool."""

    name: str
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    layer: Layer
    router: Router
    pools: dict[str, Pool]
    remotes: dict[str, RemoteTarget]
    listeners: dict[str, ListenerConfig]
    policies: dict[str, tuple] = field(default_factory=dict)  # route name → compiled policies, in order
    budgets: dict = field(default_factory=dict)  # upstream name → balancer.retry.RetryBudget (live counters)

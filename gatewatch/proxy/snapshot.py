"""The runtime snapshot of one layer: compiled routes, their policies and the targets they point at, built from
the config at load and swapped whole on reload.

A request keeps the snapshot it started with: the engine reads `engine.snapshot` once, when the request arrives,
and every phase reads the request's own. Nothing in a snapshot is changed after `build` returns; the live state
it points at (pools, retry budgets, policy stores) is owned outside it and outlives it.

Primitives: `Snapshot`, `RoutePlan` (`proxy.plan`: what the request path reads of a route's config, read out
of it once),
`Target` (`proxy.plan`: where one route's requests go: a pool of this process or a URL upstream,
with the route's retry budget and compiled policies; or, for a route with `upstreams`, a `split.Split` between
one such target per side; and the route's `mirror.MirrorTarget`), `RemoteTarget` (a URL upstream),
`build(layer, config, pools, budgets, policy_resources, config_version)`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from yarl import URL

from gatewatch.balancer.pool import Pool
from gatewatch.balancer.retry import RetryBudget, RetryBudgets
from gatewatch.config import GatewatchConfig, ListenerConfig
from gatewatch.edge.policies.build import PolicyResources, build_policies
from gatewatch.edge.routing import Router
from gatewatch.proxy.aggregate import compile_plan
from gatewatch.proxy.mirror import MirrorTarget
from gatewatch.proxy.plan import RoutePlan, Target
from gatewatch.proxy.split import Split
from gatewatch.telemetry.names import Layer


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """A URL upstream: a separate balancer tier or a self-balancing service. One connection pool."""

    name: str
    scheme: str
    host: str
    port: int
    instance: str  # how its attempts name it: host:port


@dataclass(frozen=True, slots=True)
class TraceTrust:
    """How a listener treats an inbound trace context: `mode` (continue | link | ignore), except for clients in
    `networks`, whose context is continued."""

    mode: str
    networks: tuple = ()

    def for_client(self, address: str) -> str:
        if self.networks and self.mode != "continue":
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return self.mode
            if any(ip in net for net in self.networks):
                return "continue"
        return self.mode


@dataclass(frozen=True, slots=True)
class Snapshot:
    layer: Layer
    router: Router
    listeners: Mapping[str, ListenerConfig]
    targets: Mapping[str, Target]  # route name → where its requests go
    trace_trust: Mapping[str, TraceTrust]  # listener name → its inbound-context rule
    plans: tuple[RoutePlan, ...]  # per route, in declared order (`RouteMatch.index`): what its requests read
    config_version: str = ""  # `gatewatch.config.config_version` of the config it was built from


def build(layer: Layer, config: GatewatchConfig, pools: Mapping[str, Pool], budgets: RetryBudgets,
          policy_resources: PolicyResources, config_version: str = "") -> Snapshot:
    section = config.edge if layer is Layer.EDGE else config.balancer
    remotes = {u.name: remote_target(u.name, u.url) for u in config.edge.upstreams} \
        if config.edge and layer is Layer.EDGE else {}
    policies = build_policies(section.routes, policy_resources)
    live = budgets.for_upstreams({r.upstream for r in section.routes}
                                 | {name for r in section.routes for name in r.upstream_names})
    targets = {r.name: Target(r.upstream, pools.get(r.upstream), remotes.get(r.upstream), live[r.upstream],
                              tuple(policies.get(r.name, ())),
                              compile_plan(r.aggregate, pools, remotes) if r.aggregate is not None else None)
               if not r.upstreams and r.mirror is None else _traffic_target(r, pools, remotes, live, policies)
               for r in section.routes}
    default_mode = "link" if layer is Layer.EDGE else "continue"
    trust = {lst.name: TraceTrust(lst.incoming_trace_context or default_mode,
                                  tuple(ipaddress.ip_network(n, strict=False) for n in lst.trusted_trace_sources))
             for lst in section.listeners}
    return Snapshot(layer=layer, router=Router(section.routes), trace_trust=MappingProxyType(trust),
                    listeners=MappingProxyType({lst.name: lst for lst in section.listeners}),
                    targets=MappingProxyType(targets), config_version=config_version,
                    plans=tuple(RoutePlan(r) for r in section.routes))


def _traffic_target(r, pools: Mapping[str, Pool], remotes: Mapping[str, RemoteTarget],
                    live: Mapping[str, RetryBudget], policies: Mapping[str, list]) -> Target:
    """A route with a weighted split and/or a mirror (issue 19): one Target per side, each with the mirror."""
    compiled = tuple(policies.get(r.name, ()))
    m = r.mirror
    mirror = MirrorTarget(r.name, m.upstream, pools.get(m.upstream), remotes.get(m.upstream), m) if m else None
    sides = {name: Target(name, pools.get(name), remotes.get(name), live[name], compiled, mirror=mirror)
             for name in r.upstream_names}
    if r.upstream is not None:
        return sides[r.upstream]
    return Target("", None, None, None, compiled, split=Split(r, sides), mirror=mirror)


def remote_target(name: str, url: str) -> RemoteTarget:
    u = URL(url)
    host, port = u.host or "", u.port or (443 if u.scheme == "https" else 80)
    return RemoteTarget(name, u.scheme, host, port, f"{host}:{port}")

"""Service discovery: where a pool's instances come from at run time (issue 20).

A source runs as one task per pool and publishes what it learns; it never touches the pool. The balancer runtime
(`gatewatch.balancer.runtime`) applies each `Found` to the pool (`Pool.set_members`), counts every refresh in
`gatewatch_discovery_refreshes_total{pool, source, result}` and reports failures as events, the last good set
staying in place.

Primitives:
- `Found(instances, detail)`: a complete, valid instance list and where it came from ("dns A api.internal ttl
  30", "file /etc/gw/api.yaml changed", "k8s EndpointSlice shop/api-x7k2 rv 1234").
- `Failed(result, detail)`: a refresh that failed (`DiscoveryResult`: nxdomain, servfail, timeout, empty,
  invalid, expired, error) and what exactly went wrong.
- `Source`: `kind` (DiscoverySource) and `async run(publish)`, which runs until cancelled. Sources:
  `dns.DnsSource` (A/AAAA/SRV, refreshed by TTL), `file.FileSource` (a watched YAML/JSON list, debounced),
  `kubernetes.EndpointSliceSource` (LIST + WATCH of a Service's EndpointSlices).
- `build(config) -> Source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from gatewatch.balancer.config import DiscoveryConfig, InstanceConfig
from gatewatch.telemetry.names import DiscoveryResult, DiscoverySource


@dataclass(frozen=True, slots=True)
class Found:
    instances: tuple[InstanceConfig, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class Failed:
    result: DiscoveryResult
    detail: str


Publish = Callable[[Found | Failed], None]


class Source(Protocol):
    kind: DiscoverySource

    async def run(self, publish: Publish) -> None:
        """Publish the instance list as it is now, then on every change (or failure), until cancelled."""


def build(cfg: DiscoveryConfig) -> Source:
    if cfg.dns is not None:
        from gatewatch.balancer.discovery.dns import DnsSource
        return DnsSource(cfg.dns)
    if cfg.file is not None:
        from gatewatch.balancer.discovery.file import FileSource
        return FileSource(cfg.file)
    from gatewatch.balancer.discovery.kubernetes import EndpointSliceSource
    return EndpointSliceSource(cfg.kubernetes)

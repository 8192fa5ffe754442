"""Compile the policies of a layer's routes into runtime objects (once per snapshot), with the shared
resources they need (metrics, telemetry, clients that live as long as the process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.policies.base import Policy
from edge.policies.config import IpAccessPolicyConfig
from edge.policies.ip_access import IpAccessPolicy


@dataclass
class PolicyResources:
    """Process-wide things policies share. `start()` after the loop runs, `close()` on shutdown."""

    metrics: object
    telemetry: object
    closers: list = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()


def build_policy(cfg, resources: PolicyResources) -> Policy:
    if isinstance(cfg, IpAccessPolicyConfig):
        return IpAccessPolicy(cfg)
    raise TypeError(f"no runtime for policy type {cfg.type!r}")


def build_policies(routes, resources: PolicyResources) -> dict[str, tuple[Policy, ...]]:
    return {r.name: tuple(build_policy(p, resources) for p in r.policies) for r in routes if r.policies}

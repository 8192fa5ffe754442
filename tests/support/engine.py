"""An engine on the in-memory I/O pair: the whole request path from a config, with no sockets and no exporter.

`EngineHarness(config, upstream)` builds what `Runtime` builds for the first layer that has listeners (snapshot,
pools, policies, telemetry with a `MemorySink`), wired to a `MemoryListener` and a `MemoryForwarder` whose
`upstream(request)` scripts the instances. With `now=True` the pair takes the synchronous path a fast listener
and forwarder take (`Engine.handle_now`, `send_now`) for bodiless requests. `await h.request(...)` sends one request; `h.records` are the
finished requests' records (spans and decision logs as data); `h.sample(name, **labels)` reads a metric.
"""

from __future__ import annotations

import random
from typing import Callable

from gatewatch.balancer.pool import Pool
from gatewatch.balancer.retry import RetryBudgets
from gatewatch.config import parse_config
from gatewatch.edge.policies.build import PolicyResources
from gatewatch.io.interfaces import UpstreamRequest
from gatewatch.io.memory import MemoryForwarder, MemoryListener, Reply
from gatewatch.proxy import snapshot
from gatewatch.proxy.engine import Engine
from gatewatch.telemetry.config import resolve
from gatewatch.telemetry.context import RequestRecord
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import ErrorType, Layer
from gatewatch.telemetry.recorder import MemorySink, Telemetry


class EngineHarness:
    def __init__(self, config: dict, upstream: Callable[[UpstreamRequest], Reply | ErrorType], seed: int = 7,
                 now: bool = False):
        cfg = parse_config({"admin": {"address": "127.0.0.1:0"}, **config})
        self.metrics = Metrics("test")
        self.sink = MemorySink()
        self.telemetry = Telemetry(resolve(cfg.telemetry, "engine-test", {}), self.metrics, "test", "engine-test",
                                   sink=self.sink)
        self.pools = {p.name: Pool(p) for p in (cfg.balancer.pools if cfg.balancer else ())}
        self.budgets = RetryBudgets()
        self.policy_resources = PolicyResources(self.metrics, self.telemetry)
        layer = Layer.EDGE if cfg.edge else Layer.BALANCER
        section = cfg.edge if cfg.edge else cfg.balancer
        self.config = cfg
        self.forwarder = MemoryForwarder(upstream, now=now)
        self.engine = Engine(snapshot.build(layer, cfg, self.pools, self.budgets, self.policy_resources),
                             self.forwarder, self.telemetry, rng=random.Random(seed))
        self.listener = MemoryListener(section.listeners[0].name, self.engine.handle, self.engine.reject,
                                       handle_now=self.engine.handle_now if now else None)

    async def request(self, method: str = "GET", target: str = "/", headers=(), body=None, **head_args):
        return await self.listener.request(method, target, headers, body, **head_args)

    async def reload(self, config: dict) -> None:
        """Swap the snapshot as `Runtime.reload` does: an unchanged pool keeps its state, a new one starts."""
        cfg = parse_config({"admin": {"address": "127.0.0.1:0"}, **config})
        old = self.pools
        self.pools = {p.name: old[p.name] if p.name in old and old[p.name].config == p else Pool(p)
                      for p in cfg.balancer.pools}
        self.engine.snapshot = snapshot.build(self.engine.layer, cfg, self.pools, self.budgets,
                                              self.policy_resources)

    @property
    def records(self) -> list[RequestRecord]:
        return [r for r in self.sink.records if isinstance(r, RequestRecord)]

    def sample(self, name: str, **labels) -> float:
        for fam in self.metrics.collect_all():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    async def close(self) -> None:
        await self.policy_resources.close()


def by_instance(**replies) -> Callable[[UpstreamRequest], Reply | ErrorType]:
    """An upstream scripted per instance port: `by_instance(p9001=[Reply(503), Reply()], p9002=Reply())`. A list is
    played in order, its last entry repeating."""
    played: dict[str, int] = {}

    def upstream(request: UpstreamRequest) -> Reply | ErrorType:
        script = replies[f"p{request.port}"]
        if not isinstance(script, list):
            return script
        n = played.get(request.port, 0)
        played[request.port] = n + 1
        return script[min(n, len(script) - 1)]

    return upstream

"""A pool at run time: its endpoints (from config), the algorithm's cursor and per-endpoint in-flight counts.

`Pool.pick(exclude, rng)` asks the configured algorithm; `Pool.acquire(endpoint)` / `release(endpoint)` keep the
in-flight gauge that least-request balancing and the `gatewatch.lb.in_flight` attribute read.
"""

from __future__ import annotations

import random
from typing import Mapping

from balancer.algorithms import ALGORITHMS, CursorState, Endpoint, NoHealthyEndpoint, Pick, prepare
from balancer.config import PoolConfig


class Pool:
    def __init__(self, config: PoolConfig):
        self.config = config
        self.name = config.name
        self.algorithm = config.algorithm
        self.endpoints = tuple(
            Endpoint(id=i.instance_id, host=i.host, port=i.port, weight=i.weight, zone=i.zone, index=n)
            for n, i in enumerate(config.instances)
        )
        self._by_id = {e.id: e for e in self.endpoints}
        self._state = CursorState()
        prepare(config.algorithm, self.endpoints, self._state)
        self._pick = ALGORITHMS[config.algorithm]
        self.in_flight: dict[str, int] = {e.id: 0 for e in self.endpoints}

    def pick(self, exclude: Mapping[str, str], rng: random.Random) -> Pick | NoHealthyEndpoint:
        return self._pick(self.endpoints, self._state, exclude, rng)

    def acquire(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint.id] += 1

    def release(self, endpoint: Endpoint) -> None:
        self.in_flight[endpoint.id] -= 1

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._by_id.get(endpoint_id)

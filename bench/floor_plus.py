#!/usr/bin/env python3
"""The python floor plus the least a gateway does per request: a bound on what issue 14's 0.7x target leaves.

    [FLOOR_FEATURES=route,pick,...] python bench/floor_plus.py LISTEN_PORT UPSTREAM_PORT

`bench/floor_proxy.py` (imported, not copied), with each request also doing what every Gatewatch request does
with telemetry off, written as tightly as Python allows and nothing more:

- `route`: the first of three path-prefix routes that matches (`str.startswith`);
- `pick`: round robin over three instances (all the one upstream connection: only the choice is counted);
- `ids`: a 128-bit X-Request-Id and a W3C traceparent (RFC 9110 has no rule here; W3C Trace Context §3.2)
  minted from `random.getrandbits` and sent upstream, and the X-Request-Id sent back to the client;
- `via`: a `Via` on both directions (RFC 9110 §7.6.3);
- `metrics`: one request counter by (route, instance, status) and one duration histogram by route, in dicts.

`FLOOR_FEATURES` in the environment is a comma-separated subset (default: all). The bench's rows
`python-floor-plus` and `python-floor-plus-compiled` (the latter compiled with the floor, harness/compiled.py) and
bench/instructions.py's `python-floor-plus` run it; bench/README.md, "What the 0.7x target leaves", says what they
showed. It is an experiment, not a proxy anyone should run.
"""

from __future__ import annotations

import os
import random
import sys
from bisect import bisect_left
from pathlib import Path
from time import perf_counter

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor_proxy

ALL = ("route", "pick", "ids", "via", "metrics")
FEATURES = frozenset(os.environ.get("FLOOR_FEATURES", ",".join(ALL)).split(","))
ROUTE, PICK, IDS, VIA, METRICS = (f in FEATURES for f in ALL)
ROUTES = ((b"/admin/", "admin"), (b"/static/", "static"), (b"/", "all"))
INSTANCES = ("i0", "i1", "i2")
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Each side's added lines in one %-format (one bytes object built per request and direction).
UP = b"X-Forwarded-For: %s\r\n" + (b"X-Request-Id: %032x\r\ntraceparent: 00-%032x-%016x-01\r\n" if IDS else b"") \
    + (b"Via: 1.1 gatewatch\r\n" if VIA else b"")
DOWN = (b"X-Request-Id: %032x\r\n" if IDS else b"") + (b"Via: 1.1 gatewatch\r\n" if VIA else b"")
randbits = random.Random().getrandbits
counts: dict[tuple[str, str, int], int] = {}
histograms: dict[str, list[float]] = {name: [0.0] * (len(BOUNDS) + 2) for _, name in ROUTES}
cursor = [0]


class Upstream(floor_proxy.Upstream):
    def on_message_complete(self):
        client = self.client
        status = self.parser.get_status_code()
        client.transport.write(self.message(b"HTTP/1.1 %d OK\r\n" % status,
                                            DOWN % client.request_id if IDS else DOWN))
        if METRICS:
            key = (client.route, client.instance, status)
            counts[key] = counts.get(key, 0) + 1
            h = histograms[client.route]
            took = perf_counter() - client.started
            h[bisect_left(BOUNDS, took)] += 1
            h[-1] += took


class Client(floor_proxy.Client):
    upstream_class = Upstream
    route = "all"
    instance = "i0"
    request_id = 0
    started = 0.0

    def on_message_complete(self):
        if METRICS:
            self.started = perf_counter()
        if ROUTE:
            url = self.url
            for prefix, name in ROUTES:
                if url.startswith(prefix):
                    self.route = name
                    break
        if PICK:
            n = cursor[0] = (cursor[0] + 1) % 3
            self.instance = INSTANCES[n]
        if IDS:
            rid = self.request_id = randbits(128)
            extra = UP % (self.peer, rid, randbits(128), randbits(64))
        else:
            extra = UP % self.peer
        request = self.message(self.parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n", extra)
        if self.upstream is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)


async def main(listen_port: int, upstream_port: int) -> None:
    await floor_proxy.main(listen_port, upstream_port, Client)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))

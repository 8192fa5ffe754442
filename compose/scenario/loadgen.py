"""The compose stack's load generator: a realistic scenario against the edge, on a loop.

Each cycle (CYCLE_S seconds, default 60):
  - steady traffic at RPS requests/s: orders (GET /api/orders/{id}), catalog (GET /api/catalog/...), checkout
    (POST /api/checkout) and a few unknown paths (404 no_route). Every request carries a valid HS256 JWT for
    one of a handful of users and that user's X-Api-Key;
  - about BAD_TOKEN_SHARE of them carry a bad credential instead: an expired JWT, a JWT signed with the wrong
    key, a malformed token, or none at all;
  - once per cycle, a burst: BURST_REQUESTS requests as fast as 32 connections allow, all from one consumer
    ("burst-client"), to trip a per-consumer rate limit.
backend-b is stopped and restarted on its own schedule (compose/scenario/flaky-backend.sh).

What the gateway does with credentials depends on the policies configured on its routes (see compose/README.md).
Prints one summary line per cycle: statuses seen per kind of request, and a few trace ids of failed requests.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time

import aiohttp
import jwt

TARGET = os.environ.get("TARGET", "http://edge:8080").rstrip("/")
RPS = float(os.environ.get("RPS", "15"))
CYCLE_S = float(os.environ.get("CYCLE_S", "60"))
BURST_REQUESTS = int(os.environ.get("BURST_REQUESTS", "300"))
BAD_TOKEN_SHARE = float(os.environ.get("BAD_TOKEN_SHARE", "0.06"))
JWT_SECRET = os.environ.get("GATEWATCH_DEMO_JWT_SECRET", "gatewatch-demo-jwt-secret-change-me-0000")
JWT_ISSUER = os.environ.get("GATEWATCH_DEMO_JWT_ISSUER", "https://auth.demo.gatewatch")
JWT_AUDIENCE = os.environ.get("GATEWATCH_DEMO_JWT_AUDIENCE", "shop-api")
USERS = [f"user-{i}" for i in range(1, 9)]


def token(sub: str, *, expired: bool = False, wrong_key: bool = False) -> str:
    now = int(time.time())
    claims = {"sub": sub, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "iat": now - 30,
              "exp": now - 60 if expired else now + 300}
    return jwt.encode(claims, "not-the-gateway-key-but-long-enough-0000" if wrong_key else JWT_SECRET, algorithm="HS256")


def credentials(rng: random.Random, sub: str) -> tuple[str, dict[str, str]]:
    """(kind, headers): a valid credential, or one of the bad ones."""
    if rng.random() >= BAD_TOKEN_SHARE:
        return "ok", {"Authorization": f"Bearer {token(sub)}", "X-Api-Key": f"key-{sub}"}
    kind = rng.choice(["expired", "bad_signature", "malformed", "missing"])
    if kind == "expired":
        return kind, {"Authorization": f"Bearer {token(sub, expired=True)}", "X-Api-Key": f"key-{sub}"}
    if kind == "bad_signature":
        return kind, {"Authorization": f"Bearer {token(sub, wrong_key=True)}", "X-Api-Key": f"key-{sub}"}
    if kind == "malformed":
        return kind, {"Authorization": "Bearer not.a.jwt", "X-Api-Key": f"key-{sub}"}
    return kind, {}


def request_line(rng: random.Random) -> tuple[str, str, bytes | None]:
    x = rng.random()
    if x < 0.55:
        return "GET", f"/api/orders/{rng.randint(1, 9999)}", None
    if x < 0.80:
        return "GET", f"/api/catalog/items/{rng.choice(['shoes', 'hats', 'socks'])}", None
    if x < 0.96:
        return "POST", "/api/checkout", json.dumps({"cart": rng.randint(1, 500)}).encode()
    return "GET", "/api/unknown", None


class Stats:
    def __init__(self) -> None:
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failed_traces: collections.deque[str] = collections.deque(maxlen=3)

    def line(self, cycle: int) -> str:
        parts = [f"{kind}: " + " ".join(f"{k}={v}" for k, v in sorted(c.items()))
                 for kind, c in sorted(self.by_kind.items())]
        return (f"loadgen cycle {cycle}: " + " | ".join(parts)
                + f" | failed traces: {', '.join(self.failed_traces) or '-'}")


async def send(session: aiohttp.ClientSession, stats: Stats, kind: str, method: str, path: str,
               body: bytes | None, headers: dict[str, str]) -> None:
    try:
        async with session.request(method, TARGET + path, data=body, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=10)) as r:
            await r.read()
            stats.by_kind[kind][str(r.status)] += 1
            tr = r.headers.get("traceresponse", "")
            if r.status >= 500 and tr.count("-") == 3:
                stats.failed_traces.append(tr.split("-")[1])
    except (aiohttp.ClientError, asyncio.TimeoutError):
        stats.by_kind[kind]["transport_error"] += 1


async def steady(session: aiohttp.ClientSession, stats: Stats, rng: random.Random, until: float) -> None:
    tasks: set[asyncio.Task] = set()
    interval = 1.0 / RPS
    next_at = time.monotonic()
    while time.monotonic() < until:
        if len(tasks) < 64:
            sub = rng.choice(USERS)
            kind, headers = credentials(rng, sub)
            method, path, body = request_line(rng)
            t = asyncio.create_task(send(session, stats, kind, method, path, body, headers))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=10)


async def burst(session: aiohttp.ClientSession, stats: Stats) -> None:
    headers = {"Authorization": f"Bearer {token('burst-client')}", "X-Api-Key": "key-burst-client"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(BURST_REQUESTS):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await send(session, stats, "burst", "GET", f"/api/orders/{i}", None, headers)

    await asyncio.gather(*(worker() for _ in range(32)))


async def main() -> None:
    rng = random.Random()
    connector = aiohttp.TCPConnector(limit=96)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": "gatewatch-loadgen"}) as session:
        print(f"loadgen: target {TARGET}, {RPS} rps, cycle {CYCLE_S}s, burst {BURST_REQUESTS} requests", flush=True)
        cycle = 0
        while True:
            cycle += 1
            stats = Stats()
            started = time.monotonic()
            await steady(session, stats, rng, started + CYCLE_S * 0.85)
            await burst(session, stats)
            await steady(session, stats, rng, started + CYCLE_S)
            print(stats.line(cycle), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

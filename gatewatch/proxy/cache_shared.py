"""The Redis tier of a route's response cache (`cache.shared`), shared by every process and replica.

The in-process store (`proxy.cache.Store`) stays the first place a request looks; on a miss there, `Shared.find`
asks Redis (bounded by `timeout_s`), and what it returns fills the in-process store. Every response stored
in-process is written to Redis as well, in the background (`put`), and an invalidation (RFC 9111 §4.4) deletes the
URI's responses from Redis and is published, so every process drops its own copies (`listen`).

Layout in Redis: one hash per URI part of the key (`{key_prefix}:{route}:{sha256(uri)}`), one field per header
part of the key, whose value is the stored variants (marshal: plain data, no code on load), expiring with the
longest-lived of them. Redis unreachable or slow: the request goes on as an in-process-only cache would, and
Redis is skipped for `retry_after_s` (a warning when that starts, a line when it ends). Nothing waits on a write.

Primitives: `Shared(route, cfg, on_invalidate)`: `find`, `put`, `invalidate`, `listen`, `close`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import marshal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gatewatch.edge.cache import CacheSharedConfig

if TYPE_CHECKING:
    from gatewatch.proxy.cache import Entry

log = logging.getLogger("gatewatch.cache")
MAX_WRITES = 64  # background writes in flight per route; more are dropped (the in-process store has them)
FIELDS = ("uri", "extra", "vary", "vary_values", "status", "reason", "headers", "body", "cc", "date",
          "response_time", "initial_age", "lifetime", "etag", "last_modified")


def encode(entries: list[Entry]) -> bytes:
    return marshal.dumps([tuple(getattr(e, f) for f in FIELDS) for e in entries])


def decode(raw: bytes) -> list[Entry]:
    from gatewatch.proxy.cache import (
        Entry,  # the store's type; this module is its helper
    )
    out = []
    for fields in marshal.loads(raw):
        e = Entry(*fields)
        e.vary, e.vary_values = tuple(e.vary), tuple(e.vary_values)
        e.headers = tuple(tuple(h) for h in e.headers)
        out.append(e)
    return out


class Shared:
    def __init__(self, route: str, cfg: CacheSharedConfig, on_invalidate: Callable[[list[str]], None],
                 monotonic: Callable[[], float] = time.monotonic):
        from redis.asyncio import (
            Redis,  # only routes with a shared tier need the client
        )

        self.route, self.cfg = route, cfg
        self.channel = f"{cfg.key_prefix}:invalidate"
        self._client = Redis.from_url(cfg.url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s)
        self._on_invalidate = on_invalidate
        self._monotonic = monotonic
        self._down_until = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None

    def _key(self, uri: str) -> str:
        return f"{self.cfg.key_prefix}:{self.route}:{hashlib.sha256(uri.encode()).hexdigest()}"

    def available(self) -> bool:
        return self._monotonic() >= self._down_until

    def _failed(self, err: BaseException) -> None:
        if self.available():
            log.warning("cache of route %s: shared store unavailable (%s); in-process only for %g s", self.route,
                        type(err).__name__, self.cfg.retry_after_s)
        self._down_until = self._monotonic() + self.cfg.retry_after_s

    async def find(self, uri: str, extra: str) -> list[Entry]:
        """The variants Redis holds for the key (none when Redis is down, slow or holds garbage)."""
        from redis.exceptions import RedisError
        if not self.available():
            return []
        try:
            raw = await asyncio.wait_for(self._client.hget(self._key(uri), extra), self.cfg.timeout_s)
        except (TimeoutError, RedisError, OSError) as err:
            self._failed(err)
            return []
        if raw is None:
            return []
        try:
            return decode(raw)
        except (ValueError, EOFError, TypeError):
            return []

    def put(self, e: Entry, ttl_s: float, max_variants: int) -> None:
        """Write `e` to Redis in the background (replacing the variant with the same Vary values)."""
        if self.available() and len(self._tasks) < MAX_WRITES:
            self._spawn(self._put(e, max(1, int(ttl_s * 1000)), max_variants))

    async def _put(self, e: Entry, ttl_ms: int, max_variants: int) -> None:
        from redis.exceptions import RedisError
        key = self._key(e.uri)
        try:
            raw = await asyncio.wait_for(self._client.hget(key, e.extra), self.cfg.timeout_s)
            try:
                variants = decode(raw) if raw else []
            except (ValueError, EOFError, TypeError):
                variants = []
            others = [v for v in variants if (v.vary, v.vary_values) != (e.vary, e.vary_values)]
            variants = others[len(others) - max_variants + 1:] if len(others) >= max_variants else others
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(key, e.extra, encode([*variants, e]))
            pipe.pexpire(key, ttl_ms, gt=True)
            pipe.pexpire(key, ttl_ms, nx=True)
            await asyncio.wait_for(pipe.execute(), self.cfg.timeout_s)
        except (TimeoutError, RedisError, OSError) as err:
            self._failed(err)

    def invalidate(self, uris: list[str]) -> None:
        """Delete the URIs' responses from Redis and tell every process to drop its own (§4.4)."""
        if self.available():
            self._spawn(self._invalidate(uris))

    async def _invalidate(self, uris: list[str]) -> None:
        from redis.exceptions import RedisError
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(*(self._key(u) for u in uris))
            pipe.publish(self.channel, marshal.dumps((self.route, uris)))
            await asyncio.wait_for(pipe.execute(), self.cfg.timeout_s)
        except (TimeoutError, RedisError, OSError) as err:
            self._failed(err)

    def listen(self) -> None:
        """Follow the invalidations other processes publish (started once, on the running loop)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        from redis.exceptions import RedisError
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        continue
                    try:
                        route, uris = marshal.loads(msg["data"])
                    except (ValueError, EOFError, TypeError):
                        continue
                    if route == self.route:
                        self._on_invalidate(list(uris))
            except (RedisError, OSError) as err:
                self._failed(err)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(max(self.cfg.retry_after_s, 0.1))

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

"""Rate-limit algorithms and their stores: pure arithmetic, a local (per-process) store and a Redis store.

Primitives:
- `Hit`: one counted request's result — allowed, the limit, remaining, seconds until the limit is fully
  available again (`reset_s`), and when refused, seconds until one request would pass (`retry_after_s`).
- `token_bucket(state, now, limit, window_s)` / `sliding_window(...)`: pure functions of (state, clock) →
  (new state, Hit). Token bucket: a burst of `limit`, refilled at limit/window_s per second. Sliding window:
  the two-window estimate (previous window's count weighted by its remaining overlap + the current count).
- `LocalStore`: per-process state in a bounded LRU map, clock injected.
- `RedisStore`: the same two algorithms as Lua scripts run atomically in Redis (clock = Redis `TIME`, so all
  gatewatch processes agree); a short timeout. Callers get `None` when the store could not decide (their
  fail mode applies); after a connection failure, or `TIMEOUTS_BEFORE_DOWN` timeouts in a row, the store is
  not tried again for `retry_after_s`. Commands in flight are capped at the
  client's connection count; a request that finds no free connection within `timeout_s` is undecided too,
  without taking the store offline. `last_rtt_s` is the round trip of the latest command.
- `StoreHealth`: one Redis store's availability, shared by every policy that uses it and kept across reloads:
  each transition is logged once (WARNING down, INFO back), set in `gatewatch_ratelimit_store_up{store}` and
  recorded as a `gatewatch.ratelimit.store.transition` event naming the request that ran into it; while the
  store is down, `event_id` names the outage, so the requests it affects can say so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from redis.exceptions import TimeoutError as RedisTimeout

from gatewatch.telemetry.context import new_event_id
from gatewatch.telemetry.names import Attr, Event, StoreState

log = logging.getLogger("gatewatch.policies.ratelimit")

MAX_REDIS_CONNECTIONS = 64  # per Redis client (one client per URL per process)
TIMEOUTS_BEFORE_DOWN = 3  # consecutive command timeouts that take the store offline for retry_after_s


@dataclass(slots=True)
class Hit:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0


def _tb_result(tokens: float, allowed: bool, limit: int, window_s: float) -> Hit:
    rate = limit / window_s
    return Hit(allowed, limit, max(0, math.floor(tokens)), (limit - tokens) / rate,
               0.0 if allowed else (1 - tokens) / rate)


def token_bucket(state, now: float, limit: int, window_s: float):
    tokens, ts = state if state is not None else (float(limit), now)
    tokens = min(float(limit), tokens + max(0.0, now - ts) * limit / window_s)
    allowed = tokens >= 1
    if allowed:
        tokens -= 1
    return (tokens, now), _tb_result(tokens, allowed, limit, window_s)


def _sw_result(est: float, elapsed: float, cur: int, prev: int, allowed: bool, limit: int, window_s: float) -> Hit:
    reset = window_s - elapsed
    if allowed:
        return Hit(True, limit, max(0, math.floor(limit - est)), reset)
    if cur >= limit or prev == 0:
        retry = reset  # only the next window can make room
    else:  # the previous window's weight must shrink until the estimate drops below limit - 1
        need = (limit - 1 - cur) / prev  # required remaining overlap fraction
        retry = max(0.0, (1 - need) * window_s - elapsed)
    return Hit(False, limit, 0, reset, retry)


def sliding_window(state, now: float, limit: int, window_s: float):
    w = math.floor(now / window_s)
    sw, cur, prev = state if state is not None else (w, 0, 0)
    if sw != w:
        cur, prev = (0, cur) if sw == w - 1 else (0, 0)
    elapsed = now - w * window_s
    est = prev * (1 - elapsed / window_s) + cur
    allowed = est + 1 <= limit
    if allowed:
        cur += 1
        est += 1
    return (w, cur, prev), _sw_result(est, elapsed, cur, prev, allowed, limit, window_s)


ALGORITHMS = {"token_bucket": token_bucket, "sliding_window": sliding_window}


class LocalStore:
    def __init__(self, max_keys: int, monotonic: Callable[[], float] = time.monotonic):
        self._state: OrderedDict[str, tuple] = OrderedDict()
        self._max = max_keys
        self._mono = monotonic

    async def hit(self, key: str, algorithm: str, limit: int, window_s: float, trace_id: int = 0) -> Hit:
        state, result = ALGORITHMS[algorithm](self._state.get(key), self._mono(), limit, window_s)
        self._state[key] = state
        self._state.move_to_end(key)
        if len(self._state) > self._max:
            self._state.popitem(last=False)
        return result


TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then tokens = limit; ts = now end
tokens = math.min(limit, tokens + math.max(0, now - ts) * limit / window)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return {allowed, tostring(tokens)}
"""

SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local w = math.floor(now / window)
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local sw = tonumber(s[1])
local cur = tonumber(s[2]) or 0
local prev = tonumber(s[3]) or 0
if sw ~= w then
  if sw == w - 1 then prev = cur else prev = 0 end
  cur = 0
end
local elapsed = now - w * window
local est = prev * (1 - elapsed / window) + cur
local allowed = 0
if est + 1 <= limit then allowed = 1; cur = cur + 1; est = est + 1 end
redis.call('HSET', KEYS[1], 'w', tostring(w), 'c', cur, 'p', prev)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000) + 1000)
return {allowed, tostring(est), tostring(elapsed), cur, prev}
"""


class StoreHealth:
    def __init__(self, url: str, metrics=None, telemetry=None):
        self.name = _safe_url(url)
        self._metrics = metrics
        self._telemetry = telemetry
        self.available = True  # last known state, to log transitions once
        self.event_id: str | None = None  # the outage in force
        if metrics is not None:
            metrics.ratelimit_store_up.labels(self.name).set(1)

    def down(self, why: str, detail: str, trace_id: int) -> None:
        if not self.available:
            return
        self.available = False
        self.event_id = new_event_id()
        log.warning("rate-limit store %s unavailable (%s); %s", self.name, why, detail)
        self._transition(StoreState.UP, StoreState.DOWN, why, trace_id, "WARN")

    def up(self, trace_id: int) -> None:
        if self.available:
            return
        self.available = True
        log.info("rate-limit store %s available again", self.name)
        self._transition(StoreState.DOWN, StoreState.UP, "reachable", trace_id, "INFO")
        self.event_id = None

    def _transition(self, old: StoreState, new: StoreState, why: str, trace_id: int, severity: str) -> None:
        if self._metrics is not None:
            self._metrics.ratelimit_store_up.labels(self.name).set(1 if new is StoreState.UP else 0)
        if self._telemetry is None:
            return
        attrs = {Attr.RATELIMIT_STORE: self.name, Attr.STORE_FROM: old.value, Attr.STORE_TO: new.value,
                 Attr.DECISION_REASON: why, Attr.EVENT_ID: self.event_id or "",  # the outage's id, down and up
                 Attr.EVENT_TRACE_IDS: [f"{trace_id:032x}"] if trace_id else []}
        self._telemetry.event(Event.RATELIMIT_STORE, f"rate-limit store {self.name}: {old.value} -> {new.value} "
                              f"({why})", attrs, trace_id or None, None, severity)


class RedisStore:
    def __init__(self, client, cfg, monotonic: Callable[[], float] = time.monotonic,
                 slots: asyncio.Semaphore | None = None, health: StoreHealth | None = None):
        self.cfg = cfg
        self._client = client
        self._mono = monotonic
        # At most as many commands in flight as the client has connections: a burst waits for a free one (up
        # to timeout_s) instead of failing with "too many connections" and taking the store offline.
        self._slots = slots or asyncio.Semaphore(MAX_REDIS_CONNECTIONS)
        self._scripts = {"token_bucket": client.register_script(TOKEN_BUCKET_LUA),
                         "sliding_window": client.register_script(SLIDING_WINDOW_LUA)}
        self._down_until = float("-inf")
        self.health = health or StoreHealth(cfg.url)
        self.overloaded = 0  # requests that found no free connection in time (counted, not a store failure)
        self._timeouts = 0  # consecutive command timeouts
        self._last_ok = float("-inf")
        self.last_rtt_s: float | None = None

    @property
    def available(self) -> bool:
        return self.health.available

    def _down(self, why: str, trace_id: int) -> None:
        self._down_until = self._mono() + self.cfg.retry_after_s
        self._timeouts = 0
        self.health.down(why, f"failing {self.cfg.on_error}, retrying every {self.cfg.retry_after_s}s", trace_id)

    async def hit(self, key: str, algorithm: str, limit: int, window_s: float, trace_id: int = 0) -> Hit | None:
        self.last_rtt_s = None
        if self._mono() < self._down_until:
            return None
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            self.overloaded += 1  # this request is undecided; the store itself is fine
            return None
        started = self._mono()
        try:
            async with asyncio.timeout(self.cfg.timeout_s * 2):  # connect + command, whatever the client does
                res = await self._scripts[algorithm](keys=[key], args=[limit, repr(float(window_s))])
        except (TimeoutError, RedisTimeout):
            # One slow answer decides nothing about the store (a burst of new connections can be slow): only
            # several in a row, with no success meanwhile, take it offline.
            self._timeouts += 1
            if (self._timeouts >= TIMEOUTS_BEFORE_DOWN
                    and self._mono() - self._last_ok > 2 * self.cfg.timeout_s):
                self._down("timeouts", trace_id)
            return None
        except Exception as e:  # refused, reset, protocol or script error: the store is unusable right now
            self._down(type(e).__name__, trace_id)
            return None
        finally:
            self._slots.release()
        self._timeouts, self._last_ok = 0, self._mono()
        self.last_rtt_s = self._last_ok - started
        self.health.up(trace_id)
        if algorithm == "token_bucket":
            return _tb_result(float(res[1]), res[0] == 1, limit, window_s)
        est, elapsed, cur, prev = float(res[1]), float(res[2]), int(res[3]), int(res[4])
        return _sw_result(est, elapsed, cur, prev, res[0] == 1, limit, window_s)


def _safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"  # never log a password

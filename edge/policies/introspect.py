"""OAuth 2.0 Token Introspection (RFC 7662), the client side: ask the authorization server whether a token is
active, remember its answers for a while, and fail fast while it is unavailable.

Primitives:
- `Answer`: one answer — `active`, its claims (the JSON object of RFC 7662 §2.2), when it was received
  (monotonic) and its `exp` (wall clock, or None).
- `Introspector.introspect(token, now, trace_id)` → `Answer`, or None when the endpoint could not answer (the
  policy's `fail_mode` decides). The request (§2.1): POST `token` and `token_type_hint` as a form, authenticated
  with client_secret_basic (RFC 6749 §2.3.1). The answer must be a JSON object whose `active` is a boolean
  (§2.2); anything else — garbage, another status, a body over 64 KiB, no answer within `timeout_s` — is the
  endpoint failing.

Cache (keyed by the token's SHA-256, never the token; least recently used entries go beyond `max_entries`):
an active answer is reused for at most `max_ttl_s` and never past its `exp` (§4: a cached answer must not
outlive the token); an inactive one for `negative_ttl_s`. Concurrent requests with the same token share one
call (single flight). A failure makes the endpoint unavailable for a backoff (`retry_after_s`, doubling per
consecutive failure up to `retry_max_s`, jittered) during which requests get the fail mode at once, without
waiting for a timeout again — except a lone timeout: only `TIMEOUTS_BEFORE_DOWN` in a row do that (one slow
answer says little). Cached answers keep serving during an outage, but never beyond their own lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from gatewatch.edge.policies.provider import Backoff, Http, ProviderError, ProviderHealth, safe_url
from gatewatch.telemetry.names import ProviderFailure

log = logging.getLogger("gatewatch.policies.auth")

MAX_ANSWER_BYTES = 64 * 1024
TIMEOUTS_BEFORE_DOWN = 3  # consecutive timeouts that make the endpoint unavailable (as the Redis store's)


@dataclass(frozen=True, slots=True)
class Answer:
    active: bool
    claims: dict
    received: float  # monotonic
    exp: float | None  # wall clock, seconds


class Introspector:
    def __init__(self, cfg, http: Http, health: ProviderHealth | None = None,
                 monotonic: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.cfg = cfg
        self.name = safe_url(cfg.endpoint)  # for logs
        self.http = http
        self.health = health
        self._mono = monotonic
        self._backoff = Backoff(cfg.retry_after_s, cfg.retry_max_s, rng)
        self._basic = (cfg.client_id, cfg.secret())
        self._form = {"token_type_hint": cfg.token_type_hint} if cfg.token_type_hint else {}
        self._cache: OrderedDict[bytes, Answer] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task] = {}
        self._down_until = float("-inf")
        self._failures = 0  # consecutive failures that made the endpoint unavailable
        self._timeouts = 0  # consecutive timeouts
        self.calls = 0  # requests sent to the endpoint
        self.cache_hits = 0

    def cancel(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()

    @property
    def event_id(self) -> str | None:
        """The outage in force, if any (the affected requests name it)."""
        return self.health.event_id if self.health is not None else None

    async def introspect(self, token: str, now: float, trace_id: int = 0) -> Answer | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        cached = self._cached(digest, now)
        if cached is not None:
            self.cache_hits += 1
            return cached
        if self._mono() < self._down_until:
            return None  # unavailable: the fail mode at once
        task = self._inflight.get(digest)
        if task is None:
            task = self._inflight[digest] = asyncio.get_running_loop().create_task(
                self._call(token, digest, now, trace_id))
            task.add_done_callback(lambda _t: self._inflight.pop(digest, None))
        return await asyncio.shield(task)  # a client going away does not cancel the call others wait for

    def _cached(self, digest: bytes, now: float) -> Answer | None:
        answer = self._cache.get(digest)
        if answer is None:
            return None
        age = self._mono() - answer.received
        if answer.active:
            fresh = age < self.cfg.cache.max_ttl_s and (answer.exp is None or now < answer.exp)
        else:
            fresh = age < self.cfg.cache.negative_ttl_s
        if not fresh:
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        return answer

    async def _call(self, token: str, digest: bytes, now: float, trace_id: int) -> Answer | None:
        self.calls += 1
        try:
            doc = await self.http.post_form(self.cfg.endpoint, {"token": token, **self._form}, self.cfg.timeout_s,
                                            MAX_ANSWER_BYTES, self._basic)
            answer = self._answer(doc)
        except ProviderError as e:
            self._failed(e, trace_id)
            return None
        except Exception as e:  # noqa: BLE001 -- never a crash: an unexpected failure is the endpoint failing
            log.exception("introspection %s: unexpected failure", self.name)
            self._failed(ProviderError(ProviderFailure.BAD_RESPONSE, type(e).__name__), trace_id)
            return None
        self._failures = self._timeouts = 0
        if self.health is not None:
            self.health.up(self.cfg.endpoint, trace_id)
        self._remember(digest, answer, now)
        return answer

    def _answer(self, doc: dict) -> Answer:
        active = doc.get("active")
        if not isinstance(active, bool):  # §2.2: REQUIRED, a boolean — "true" or 1 is not an answer
            raise ProviderError(ProviderFailure.INVALID, "`active` is missing or not a boolean")
        exp = doc.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            exp = None  # §2.2: OPTIONAL NumericDate; anything else is not a lifetime we can rely on
        return Answer(active, doc if active else {}, self._mono(), exp)

    def _remember(self, digest: bytes, answer: Answer, now: float) -> None:
        c = self.cfg.cache
        ttl = c.negative_ttl_s if not answer.active else min(
            c.max_ttl_s, answer.exp - now if answer.exp is not None else c.max_ttl_s)
        if ttl <= 0 or c.max_entries == 0:
            return
        self._cache[digest] = answer
        self._cache.move_to_end(digest)
        while len(self._cache) > c.max_entries:
            self._cache.popitem(last=False)

    def _failed(self, e: ProviderError, trace_id: int) -> None:
        if e.failure is ProviderFailure.TIMEOUT:
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_BEFORE_DOWN:
                log.warning("introspection %s: %s (%d in a row)", self.name, e.detail, self._timeouts)
                return
        self._timeouts = 0
        self._failures += 1
        wait = self._backoff.delay(self._failures)
        self._down_until = self._mono() + wait
        if self.health is not None:
            self.health.down(e, self.cfg.endpoint, trace_id)
        log.warning("introspection %s: %s: %s; failing %s for %.1fs", self.name, e.failure.value,
                    e.detail, self.cfg.fail_mode, wait)

"""A route's weighted split between upstreams: which side takes a request, and why (issue 19).

A pure decision of (the compiled split, the request head, its query, an rng): `Split.choose` returns a `Choice` —
the side, the reason (a `Reason` `split.*` value) and, for a new client of a cookie-sticky split, the
`Set-Cookie` to send. In this order:
1. an override: a tester names a side in the override header (then cookie). Honoured only for a side of this
   split that `allowed` lists (every side when empty), from a client in `trusted_networks` (any when empty);
   anything else is ignored and the request is split as usual. A side at weight 0 may be forced (that is how a
   tester reaches the idle colour of a blue-green pair).
2. a sticky key: the request's `hash_key` (header, cookie, query parameter, client address — computed as a pool's,
   `proxy.request_keys`) or the split cookie Gatewatch set, hashed into the weights by weighted rendezvous
   hashing: side i scores -ln(u_i) / w_i, u_i a 64-bit hash of (key, side name) mapped into (0, 1); the lowest
   score wins. Each score is an exponential variable of rate w_i, so side i wins with probability w_i / Σw; the
   hash is keyed by nothing process-local, so a key lands on the same side in every process and after every
   reload that keeps the weights; and raising one side's weight only lowers that side's scores, so keys move
   only *to* it (5% → 10% keeps every canary user on canary), lowering it moves keys only away from it.
3. by weight: the rng, for a request without a key. A cookie-sticky split gives a new client a random key in a
   cookie and hashes it like any key, so the client's first answer already comes from its sticky side.

Routes without `upstreams` have no `Split`: they pay nothing for this module.
Primitives: `Split`, `Side`, `Choice`, `rendezvous(key_hash, sides)`, `key_hash(key)`.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import math
import random
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from gatewatch.balancer.context import set_cookie
from gatewatch.proxy import request_keys
from gatewatch.telemetry.names import Reason

if TYPE_CHECKING:
    from gatewatch.edge.config import RouteConfig, SplitCookieConfig
    from gatewatch.io.interfaces import RequestHead

M64 = (1 << 64) - 1
WEIGHT, STICKY_HASH, STICKY_COOKIE = Reason.SPLIT_WEIGHT.value, Reason.SPLIT_STICKY_HASH.value, \
    Reason.SPLIT_STICKY_COOKIE.value
OVERRIDE_HEADER, OVERRIDE_COOKIE = Reason.SPLIT_OVERRIDE_HEADER.value, Reason.SPLIT_OVERRIDE_COOKIE.value
COOKIE_KEY = re.compile(r"[0-9a-f]{16}")  # what Gatewatch puts in a split cookie: 64 random bits, hex


class Side(NamedTuple):
    name: str
    weight: int
    seed: int  # the side's name hashed: mixed with a key's hash, the side's own draw for that key
    target: Any  # the `plan.Target` a request on this side goes to


class Choice(NamedTuple):
    side: Side
    reason: str  # Reason split.* value
    set_cookie: str | None = None  # a new client's split cookie (cookie stickiness)


def key_hash(key: str) -> int:
    """64 bits of a sticky key, the same in every process (never Python's salted `hash`)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """The SplitMix64 finaliser: a key's hash combined with a side's seed becomes an independent-looking draw."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rendezvous(h: int, sides: tuple[Side, ...]) -> Side:
    """Weighted rendezvous hashing: the side with the lowest -ln(u) / weight (u in (0, 1), from the key's hash and
    the side's seed). Sides at weight 0 never win."""
    best, best_score = None, math.inf
    for side in sides:
        if not side.weight:
            continue
        u = ((_mix(h ^ side.seed) >> 11) + 0.5) * (1.0 / (1 << 53))  # 53 bits: exact in a float, never 0 or 1
        score = -math.log(u) / side.weight
        if score < best_score:
            best, best_score = side, score
    return best


class Split:
    def __init__(self, route: RouteConfig, targets: dict[str, Any]):
        """`targets`: the side name → its `plan.Target`."""
        self.sides = tuple(Side(s.name, s.weight, key_hash(s.name), targets[s.name]) for s in route.upstreams)
        self.by_name = {s.name: s for s in self.sides}
        cumulative, total = [], 0
        for s in self.sides:
            total += s.weight
            cumulative.append(total)
        self._cumulative, self._total = cumulative, total
        cfg = route.split
        sticky = cfg.sticky if cfg is not None else None
        self.hash_key = sticky.hash_key if sticky is not None else None
        self.cookie: SplitCookieConfig | None = sticky.cookie if sticky is not None else None
        override = cfg.override if cfg is not None else None
        self.override_header = override.header.lower() if override is not None and override.header else None
        self.override_cookie = override.cookie if override is not None else None
        self.overridable = frozenset(override.allowed or self.by_name) if override is not None else frozenset()
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in override.trusted_networks) \
            if override is not None else ()

    def choose(self, head: RequestHead, query: str, rng: random.Random) -> Choice:
        if self.overridable:
            forced = self._override(head)
            if forced is not None:
                return forced
        if self.hash_key is not None:
            key = request_keys.hash_key(self.hash_key, head, query)
            if key is not None:
                return Choice(rendezvous(key_hash(key), self.sides), STICKY_HASH)
        elif self.cookie is not None:
            value = request_keys.cookie(head, self.cookie.name)
            if value is not None and COOKIE_KEY.fullmatch(value):
                return Choice(rendezvous(key_hash(value), self.sides), STICKY_COOKIE)
            value = f"{rng.getrandbits(64):016x}"  # a new client (or a cookie we did not write): its key from now on
            return Choice(rendezvous(key_hash(value), self.sides), WEIGHT, split_cookie(self.cookie, value))
        i = bisect.bisect_right(self._cumulative, rng.random() * self._total)
        return Choice(self.sides[min(i, len(self.sides) - 1)], WEIGHT)

    def _override(self, head: RequestHead) -> Choice | None:
        header = self.override_header
        name, reason = (head.header(header), OVERRIDE_HEADER) if header is not None else (None, None)
        if name is None and self.override_cookie is not None:
            name, reason = request_keys.cookie(head, self.override_cookie), OVERRIDE_COOKIE
        if name is None or name.strip() not in self.overridable:
            return None
        if self.trusted and not self._trusted(head.client_address):
            return None
        return Choice(self.by_name[name.strip()], reason)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)


def split_cookie(cfg: SplitCookieConfig, value: str) -> str:
    """The `Set-Cookie` value of a split cookie (RFC 6265 §4.1): a random key, not the side's name, so a change
    of weights moves a client only as far as the weights say."""
    return set_cookie(cfg.name, value, cfg.path, cfg.max_age_s, cfg.http_only, cfg.secure)

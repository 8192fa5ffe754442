"""What a request contributes to the pick: its consistent-hashing key and its session-affinity cookie.

`hash_key(cfg, head, query)` per a pool's `hash_key` (header, cookie, query parameter or client address; None when
the request lacks it), `cookie(head, name)` (e.g. the session-affinity cookie). What the balancer does with them
is `gatewatch.balancer.context`.
"""

from __future__ import annotations

from gatewatch.io.interfaces import RequestHead


def hash_key(cfg, head: RequestHead, query: str) -> str | None:
    """The request's consistent-hashing key per the pool's `hash_key`, or None when the request lacks it."""
    if cfg.source == "client_address":
        return head.client_address
    if cfg.source == "header":
        return head.header(cfg.name.lower())
    if cfg.source == "cookie":
        return cookie(head, cfg.name)
    for part in query.split("&") if query else ():
        k, _, v = part.partition("=")
        if k == cfg.name:
            return v
    return None


def cookie(head: RequestHead, name: str) -> str | None:
    for k, v in head.headers:
        if k.lower() == "cookie":
            for item in v.split(";"):
                ck, _, cv = item.strip().partition("=")
                if ck == name:
                    return cv.strip('"')
    return None

"""The base of every config model and the name rules they share.

A leaf module: it imports pydantic and nothing of Gatewatch, so every layer's config (telemetry, balancer, edge,
the root) can build on it without importing another layer.

Primitives: `Strict` (immutable, unknown keys are errors), `NAME_PATTERN` (names of routes, pools, listeners,
policies, instances: they become metric labels and span attributes), `HTTP_TOKEN` (RFC 9110 §5.6.2 `token`).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # used with fullmatch: '$' would allow a trailing newline


class Strict(BaseModel):
    """Base of every config model: immutable, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def url_without_userinfo(url: str) -> str:
    """`url` with its userinfo (RFC 3986 §3.2.1: `user:password@`) replaced by `<redacted>`, for showing a
    configured URL (admin /config) without its password: `redis://:pw@host:6379` → `redis://<redacted>@host:6379`."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}<redacted>@{host}" if at else url

"""Transformations: `headers` (request headers set/remove/rename on the way upstream, response headers added)
and `path_rewrite` (a regular expression over the canonical path; the route's `rewrite.strip_prefix` applies
after it). They never refuse a request; in shadow mode they record what they would do and change nothing.

Reasons: transform.applied; rewrite.applied, rewrite.no_match, rewrite.invalid_result (verdict `error`,
the original path is kept).
"""

from __future__ import annotations

import re

from gatewatch.edge.paths import InvalidPath, canonical_path
from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, error, header_values
from gatewatch.telemetry.names import Outcome, PolicyReason as R


class HeadersPolicy:
    type = "headers"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.set = list(cfg.set.items())
        self.remove = {h.lower() for h in cfg.remove}
        self.rename = list(cfg.rename.items())
        self.response = list(cfg.response_add.items())
        self.response_remove = {h.lower() for h in cfg.response_remove}

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        if self.shadow:
            return allow(self, R.TRANSFORM_APPLIED.value)
        for old, new in self.rename:
            values = header_values(req, old)
            req.upstream_remove.add(old.lower())
            if values:
                req.upstream_set.append((new, ", ".join(values)))
        req.upstream_remove |= self.remove
        req.upstream_set.extend(self.set)
        req.response_headers.extend(self.response)
        req.response_remove |= self.response_remove
        return allow(self, R.TRANSFORM_APPLIED.value)


class PathRewritePolicy:
    type = "path_rewrite"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.regex = re.compile(cfg.regex)

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        new, n = self.regex.subn(self.cfg.replacement, req.path, count=1)
        if n == 0:
            return allow(self, R.REWRITE_NO_MATCH.value)
        if not new.startswith("/"):
            new = "/" + new
        try:
            new = canonical_path(new)
        except InvalidPath:
            return error(self, R.REWRITE_INVALID.value, False, 500, Outcome.INTERNAL_ERROR)
        if "?" in new or "#" in new:
            return error(self, R.REWRITE_INVALID.value, False, 500, Outcome.INTERNAL_ERROR)
        if not self.shadow:
            req.path = new
        return allow(self, R.REWRITE_APPLIED.value)

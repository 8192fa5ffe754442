"""`size_limit`: refuse request bodies larger than `max_bytes`.

- Declared `Content-Length` over the limit: 413 at once, before any body byte is read (with `Expect:
  100-continue` the client gets the 413 instead of `100 Continue`; the listener then drains a small body or
  closes the connection).
- No declared length (chunked): the body is read ahead up to `lookahead_bytes`; a body that ends within it is
  judged exactly (413, or replayed upstream unchanged). Beyond the look-ahead (only when `max_bytes` is larger)
  the body streams through a counter that cuts the upload and closes the connection at the limit.

Reasons: size.within_limit, size.too_large, body.stalled (408 client_timeout: the read-ahead waited `idle_s`).
"""

from __future__ import annotations

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.edge.policies.bodies import ENDED, STALLED, counted, read_ahead, replay, stalled
from gatewatch.telemetry.names import Outcome, PolicyReason as R


class SizeLimitPolicy:
    type = "size_limit"

    def __init__(self, cfg):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.max = cfg.max_bytes

    def _too_large(self) -> PolicyVerdict:
        return deny(self, R.SIZE_TOO_LARGE.value, 413, Outcome.PAYLOAD_TOO_LARGE,
                    f"the request body exceeds {self.max} bytes")

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        if req.body is None:
            return allow(self, R.SIZE_WITHIN.value)
        declared = req.head.header("content-length")
        if declared is not None and declared.strip().isdigit():
            return self._too_large() if int(declared) > self.max else allow(self, R.SIZE_WITHIN.value)
        window = min(self.max, self.cfg.lookahead_bytes)
        chunks, total, state = await read_ahead(req.body, window, self.cfg.idle_s)
        if state == STALLED:
            req.body = replay(chunks, req.body)
            return stalled(self, self.cfg.idle_s)
        if state == ENDED:
            req.body = replay(chunks)
            return self._too_large() if total > self.max else allow(self, R.SIZE_WITHIN.value)
        if total > self.max:
            verdict = self._too_large()
            req.body = replay(chunks, req.body)  # shadow mode: the whole body still goes upstream
            return verdict
        rest = req.body if self.shadow else counted(req.body, total, self.max, self.name, self.type)
        req.body = replay(chunks, rest)
        return allow(self, R.SIZE_WITHIN.value)
